package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// qemuPoll is how often the bench reads the installer VM's VmHWM. VmHWM is
// the process's own high-water mark, so polling misses only what QEMU adds
// in its last poll interval before it exits.
const qemuPoll = 50 * time.Millisecond

// qemuWatch finds the QEMU processes descended from root in /proc and keeps
// the largest VmHWM any of them reached.
type qemuWatch struct {
	root int
	seen map[int]bool
	peak int64
}

func (w *qemuWatch) poll() {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	parent := map[int]int{}
	var qemus []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, ppid, ok := procStat(pid)
		if !ok {
			continue
		}
		parent[pid] = ppid
		// comm is cut at 15 bytes: "qemu-system-x86".
		if strings.HasPrefix(comm, "qemu-system-") {
			qemus = append(qemus, pid)
		}
	}
	for _, pid := range qemus {
		if !descends(parent, pid, w.root) {
			continue
		}
		w.seen[pid] = true
		if hwm, ok := vmHWM(pid); ok {
			w.peak = max(w.peak, hwm)
		}
	}
}

// kill stops the QEMU processes the watch has seen that still run.
func (w *qemuWatch) kill() {
	for pid := range w.seen {
		if comm, _, ok := procStat(pid); ok && strings.HasPrefix(comm, "qemu-system-") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func descends(parent map[int]int, pid, root int) bool {
	for i := 0; i < 64 && pid > 1; i++ {
		if pid == root {
			return true
		}
		pid = parent[pid]
	}
	return false
}

// procStat reads a process's command name and parent from /proc/PID/stat:
// "PID (COMM) STATE PPID ...", where COMM may itself hold ") ".
func procStat(pid int) (string, int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	s := string(b)
	open, shut := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || shut < open {
		return "", 0, false
	}
	f := strings.Fields(s[shut+1:])
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return "", 0, false
	}
	return s[open+1 : shut], ppid, true
}

// vmHWM is a process's peak resident set, from /proc/PID/status.
func vmHWM(pid int) (int64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err == nil
			}
		}
	}
	return 0, false
}
