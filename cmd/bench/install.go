package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
)

// installFixtures are the test systems the install section builds: the
// small one the guest-phase target is about, and its large twin (the same
// system plus a couple of GiB of store paths) for QEMU's memory.
var installFixtures = []string{"system-bios", "system-big"}

// Install-mode targets from the issue.
const (
	guestPhaseLimit = 20 * time.Second // the test system's guest phase
	// qemuRSSSpread is how far QEMU's peak RSS may move between the small
	// and the large system and still count as independent of the closure's
	// size (the same allowance TestPeakRSSFlatInClosureSize gives the
	// host-side writer).
	qemuRSSSpread = 16 << 20
)

// installPhases are the guest phases the builder's "Installed in" line
// names, in table order.
var installPhases = []string{"boot", "activation", "boot loader", "shutdown"}

// pluginFQN is where `packer plugins install` puts the bench's plugin.
const pluginFQN = "github.com/packer-plugin-nixos/nixos"

// installRun is one `packer build`'s figures, as the builder reported them.
type installRun struct {
	write  time.Duration // the host writing the root filesystem
	phases map[string]time.Duration
	guest  time.Duration // the whole install step, VM start to power-off
	rss    int64         // largest VmHWM of a QEMU process of this build
}

type installRow struct {
	name     string
	paths    int
	bytes    int64
	runs     []installRun
	err      string
	timedOut bool
	timeout  time.Duration
	note     string
}

func (r *installRow) ok() bool { return r.err == "" && !r.timedOut && len(r.runs) > 0 }

// median of one figure over the runs.
func (r *installRow) median(f func(installRun) time.Duration) time.Duration {
	tr := &row{}
	for _, run := range r.runs {
		tr.times = append(tr.times, f(run))
	}
	return tr.median()
}

// medianRun is the run with the median guest phase (the lower of the two
// middle ones for an even count), so a row's phases add up to its total.
func (r *installRow) medianRun() installRun {
	runs := append([]installRun(nil), r.runs...)
	sort.SliceStable(runs, func(i, j int) bool { return runs[i].guest < runs[j].guest })
	return runs[(len(runs)-1)/2]
}

func (r *installRow) peakRSS() int64 {
	var m int64
	for _, run := range r.runs {
		m = max(m, run.rss)
	}
	return m
}

// benchInstall builds the plugin from this tree, installs it into a scratch
// plugin directory (the user's own installation is left alone) and times
// `packer build` of each test system c.runs times.
func benchInstall(ctx context.Context, c config) []*installRow {
	var rows []*installRow
	fail := func(msg string) []*installRow {
		for _, name := range installFixtures {
			rows = append(rows, &installRow{name: name, err: msg})
		}
		return rows
	}
	dir := filepath.Join(c.tmp, "install")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err.Error())
	}
	defer removeAll(dir)
	env, err := installPlugin(c.packer, dir)
	if err != nil {
		logf("install: %v", err)
		return fail(strings.ReplaceAll(err.Error(), c.tmp, "$TMP"))
	}
	for _, name := range installFixtures {
		rows = append(rows, benchSystem(ctx, c, env, dir, name))
	}
	return rows
}

// installPlugin builds the plugin as `make build` does (static: it is also
// the installer VM's /init) and installs it where only the bench's packer
// runs look. It returns their environment.
func installPlugin(packer, dir string) ([]string, error) {
	if _, err := os.Stat(packer); err != nil {
		return nil, fmt.Errorf("packer not found (%v): run `make setup` or pass -packer", err)
	}
	bin := filepath.Join(dir, "packer-plugin-nixos")
	logf("install: building the plugin")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Dir = fixtures.Root()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v: %s", err, strings.TrimSpace(string(out)))
	}
	env := append(os.Environ(), "CHECKPOINT_DISABLE=1", "PACKER_PLUGIN_PATH="+filepath.Join(dir, "plugins"))
	inst := exec.Command(packer, "plugins", "install", "--path", bin, pluginFQN)
	inst.Env = env
	if out, err := inst.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("packer plugins install: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return env, nil
}

func benchSystem(ctx context.Context, c config, env []string, dir, name string) *installRow {
	r := &installRow{name: name, timeout: c.timeout}
	logf("install %s: resolving the system", name)
	roots, err := fixtureRoots(name)
	if err == nil && len(roots) != 1 {
		err = fmt.Errorf("expected one toplevel, got %d store paths", len(roots))
	}
	var paths []string
	if err == nil {
		paths, err = closureOf(roots)
	}
	if err != nil {
		r.err = err.Error()
		return r
	}
	r.paths = len(paths)
	// Warm the page cache as for the image writers: the host write is then
	// the writer's time, not the disk's read time.
	st, err := readTree(paths)
	if err != nil {
		r.err = err.Error()
		return r
	}
	r.bytes = st.bytes
	logf("install %s: %d store paths, %s", name, r.paths, human(r.bytes))

	tmpl := filepath.Join(dir, name+".pkr.hcl")
	out := filepath.Join(dir, name+"-out")
	if err := os.WriteFile(tmpl, []byte(installTemplate(roots[0], out)), 0o644); err != nil {
		r.err = err.Error()
		return r
	}
	for i := 0; i < c.runs; i++ {
		removeAll(out)
		syscall.Sync()
		start := time.Now()
		run, log, err := packerBuild(ctx, c.timeout, c.packer, env, dir, tmpl)
		el := time.Since(start)
		removeAll(out)
		if errors.Is(err, context.DeadlineExceeded) {
			r.timedOut = true
			logf("    run %d: over %s, stopped", i+1, c.timeout)
			break
		}
		if err != nil {
			r.err = strings.ReplaceAll(reason(err, log), c.tmp, "$TMP")
			logf("    run %d: failed: %v\n%s", i+1, err, tail(log, 20))
			break
		}
		r.runs = append(r.runs, run)
		logf("    run %d: packer build %s; host write %s, guest phase %s, QEMU peak RSS %s",
			i+1, dur(el), dur(run.write), dur(run.guest), human(run.rss))
		if el > longRun && i+1 < c.runs {
			r.note = fmt.Sprintf("%d run", i+1)
			break
		}
	}
	return r
}

// installTemplate is the build the section times: the test setup,
// a legacy (BIOS, GRUB) layout installed in a 256 MiB TCG guest.
func installTemplate(system, out string) string {
	return fmt.Sprintf(`source "nixos-image" "bench" {
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  mem_size             = 256
  output_directory     = %q
}

build {
  sources = ["source.nixos-image.bench"]
}
`, system, out)
}

// qemuPoll is how often the bench reads the installer VM's VmHWM. VmHWM is
// the process's own high-water mark, so polling misses only what QEMU adds
// in its last poll interval before it exits.
const qemuPoll = 50 * time.Millisecond

// packerBuild runs one `packer build` and returns the builder's figures
// from its output, and the largest VmHWM of any QEMU process descended from
// it.
func packerBuild(ctx context.Context, limit time.Duration, packer string, env []string, dir, tmpl string) (installRun, []byte, error) {
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.Command(packer, "build", "-color=false", tmpl)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return installRun{}, nil, err
	}
	// QEMU runs in a process group of its own, so a timeout stops it by pid.
	w := &qemuWatch{root: cmd.Process.Pid, seen: map[int]bool{}}
	stop := context.AfterFunc(cctx, func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		w.kill()
	})
	done := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		t := time.NewTicker(qemuPoll)
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
	err := cmd.Wait()
	close(done)
	<-polled
	stop()
	if cctx.Err() != nil && ctx.Err() == nil {
		return installRun{}, out.Bytes(), context.DeadlineExceeded
	}
	if err != nil {
		return installRun{}, out.Bytes(), err
	}
	run, err := parseInstall(out.Bytes())
	if err != nil {
		return run, out.Bytes(), err
	}
	if len(w.seen) == 0 {
		return run, out.Bytes(), errors.New("no QEMU process seen during the build")
	}
	run.rss = w.peak
	return run, out.Bytes(), nil
}

var (
	wroteLine     = regexp.MustCompile(`(?m)Wrote \d+ store paths: .* in (\S+)\s*$`)
	installedLine = regexp.MustCompile(`(?m)Installed in (\S+) \(([^)]*)\)\s*$`)
)

// parseInstall reads the builder's "Wrote ... in X" and "Installed in X
// (boot B, activation A, boot loader L, shutdown S)" lines.
func parseInstall(out []byte) (installRun, error) {
	var run installRun
	m := wroteLine.FindSubmatch(out)
	if m == nil {
		return run, errors.New(`no "Wrote ... store paths ... in" line in packer's output`)
	}
	var err error
	if run.write, err = time.ParseDuration(string(m[1])); err != nil {
		return run, fmt.Errorf("host write time: %w", err)
	}
	m = installedLine.FindSubmatch(out)
	if m == nil {
		return run, errors.New(`no "Installed in" line in packer's output`)
	}
	if run.guest, err = time.ParseDuration(string(m[1])); err != nil {
		return run, fmt.Errorf("guest phase: %w", err)
	}
	run.phases = map[string]time.Duration{}
	for _, p := range strings.Split(string(m[2]), ", ") {
		i := strings.LastIndexByte(p, ' ')
		if i < 0 {
			return run, fmt.Errorf("phase %q: no duration", p)
		}
		d, err := time.ParseDuration(p[i+1:])
		if err != nil {
			return run, fmt.Errorf("phase %q: %w", p, err)
		}
		run.phases[p[:i]] = d
	}
	for _, name := range installPhases {
		if _, ok := run.phases[name]; !ok {
			return run, fmt.Errorf("the Installed line has no %s phase: %q", name, m[2])
		}
	}
	return run, nil
}

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

func printInstallTable(w io.Writer, c config, rows []*installRow) {
	fmt.Fprintf(w, "### install mode: `packer build` of the test systems\n\n")
	fmt.Fprintf(w, "The real `packer build` with the plugin built from this tree: legacy layout, additional_space 16M, TCG guest with 256 MiB. "+
		"Host write is the root filesystem's, up to its fsync (warm cache), median of %d runs; the guest phases are the builder's own (the VM's start to its power-off), "+
		"from the run with the median guest phase. QEMU peak RSS is the largest VmHWM of the installer VM's process over the runs.\n\n", c.runs)
	fmt.Fprint(w, "| system | closure | host write |")
	for _, p := range installPhases {
		fmt.Fprintf(w, " %s |", p)
	}
	fmt.Fprintln(w, " guest phase | QEMU peak RSS |")
	fmt.Fprintln(w, "|---|--:|--:|"+strings.Repeat("--:|", len(installPhases))+"--:|--:|")
	for _, r := range rows {
		closure := "—"
		if r.paths > 0 {
			closure = fmt.Sprintf("%d paths, %s", r.paths, human(r.bytes))
		}
		if !r.ok() {
			cell := "fails (" + mdEscape(r.err) + ")"
			if r.timedOut {
				cell = "> " + dur(r.timeout)
			}
			fmt.Fprintf(w, "| %s | %s | %s |%s — | — |\n", r.name, closure, cell, strings.Repeat(" — |", len(installPhases)))
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s |", r.name, closure, dur(r.median(func(x installRun) time.Duration { return x.write })))
		mid := r.medianRun()
		for _, p := range installPhases {
			fmt.Fprintf(w, " %s |", dur(mid.phases[p]))
		}
		guest := dur(mid.guest)
		if r.note != "" {
			guest += " (" + r.note + ")"
		}
		fmt.Fprintf(w, " %s | %s |\n", guest, human(r.peakRSS()))
	}
	fmt.Fprintln(w)
}

// installTargets: the test system's guest phase, and QEMU's peak RSS the
// same for the small and the large closure.
func installTargets(rows []*installRow) []string {
	by := map[string]*installRow{}
	for _, r := range rows {
		by[r.name] = r
	}
	verdict := func(met bool) string {
		if met {
			return "yes"
		}
		return "no"
	}
	var out []string
	small, large := by[installFixtures[0]], by[installFixtures[1]]
	target := fmt.Sprintf("%s: guest phase ≤ %s", small.name, dur(guestPhaseLimit))
	if !small.ok() {
		out = append(out, fmt.Sprintf("| %s | not measured | — |", target))
	} else {
		g := small.medianRun().guest
		out = append(out, fmt.Sprintf("| %s | %s | %s |", target, dur(g), verdict(g <= guestPhaseLimit)))
	}
	target = fmt.Sprintf("QEMU peak RSS independent of closure size: %s − %s within ±%s", large.name, small.name, human(qemuRSSSpread))
	if !small.ok() || !large.ok() {
		return append(out, fmt.Sprintf("| %s | not measured | — |", target))
	}
	s, l := small.peakRSS(), large.peakRSS()
	d := l - s
	measured := fmt.Sprintf("%s (%s) − %s (%s) = %+.1f MiB", human(l), human(large.bytes), human(s), human(small.bytes), float64(d)/(1<<20))
	return append(out, fmt.Sprintf("| %s | %s | %s |", target, measured, verdict(max(d, -d) <= qemuRSSSpread)))
}

// defaultPacker is where `make setup` puts packer (the Makefile's PACKER),
// else packer on PATH.
func defaultPacker() string {
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".cache", "packer-plugin-nixos", "packer")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("packer"); err == nil {
		return p
	}
	return "packer"
}
