package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procPoll is how often the bench reads the watched processes' VmHWM. VmHWM
// is a process's own high-water mark, so polling misses only what it adds
// in its last poll interval before it exits; the plugin's writer reaches its
// peak early and holds it, so 20 ms is plenty and costs a few /proc reads.
const procPoll = 20 * time.Millisecond

// Command names (/proc/PID/comm, cut at 15 bytes) the bench watches: the
// plugin Packer runs (installed as packer-plugin-nixos_v..._linux_amd64)
// and the installer VM's QEMU ("qemu-system-x86").
const (
	pluginComm = "packer-plugin-n"
	qemuComm   = "qemu-system-"
)

// procWatch finds the processes descended from root in /proc whose command
// name starts with one of the watched prefixes, and keeps the largest VmHWM
// each kind reached.
type procWatch struct {
	root int
	// prefixes: command-name prefixes to watch; peak and seen are per prefix.
	prefixes []string
	seen     map[string]map[int]bool
	peak     map[string]int64
}

func newProcWatch(root int, prefixes ...string) *procWatch {
	w := &procWatch{root: root, prefixes: prefixes, seen: map[string]map[int]bool{}, peak: map[string]int64{}}
	for _, p := range prefixes {
		w.seen[p] = map[int]bool{}
	}
	return w
}

func (w *procWatch) poll() {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	parent := map[int]int{}
	kind := map[int]string{}
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
		for _, p := range w.prefixes {
			if strings.HasPrefix(comm, p) {
				kind[pid] = p
			}
		}
	}
	for pid, p := range kind {
		if !descends(parent, pid, w.root) {
			continue
		}
		w.seen[p][pid] = true
		if hwm, ok := vmHWM(pid); ok {
			w.peak[p] = max(w.peak[p], hwm)
		}
	}
}

// start polls every procPoll until the returned stop is called; stop
// returns after a last poll.
func (w *procWatch) start() (stop func()) {
	done := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		t := time.NewTicker(procPoll)
		defer t.Stop()
		for {
			w.poll()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		<-polled
	}
}

// kill stops the processes of one kind the watch has seen that still run
// (QEMU runs in a process group of its own, so a timeout stops it by pid).
func (w *procWatch) kill(prefix string) {
	for pid := range w.seen[prefix] {
		if comm, _, ok := procStat(pid); ok && strings.HasPrefix(comm, prefix) {
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
