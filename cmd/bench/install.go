package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
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
	guestPhaseLimit = 6 * time.Second  // the test system's guest phase (issue 12)
	wholeBuildLimit = 15 * time.Second // the test system's whole packer build (issue 12)
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
	whole  time.Duration // the whole packer build
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

// benchInstall times `packer build` of each test system c.runs times, with
// the plugin from this tree (c.packerEnv).
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
	env, err := c.packerEnv()
	if err != nil {
		logf("install: %v", err)
		return fail(err.Error())
	}
	for _, name := range installFixtures {
		rows = append(rows, benchSystem(ctx, c, env, dir, name))
	}
	return rows
}

// installPlugin builds the plugin as `make build` does (the agent
// generated and embedded, the plugin static) and installs it where only the bench's packer
// runs look. It returns their environment.
func installPlugin(packer, dir string) ([]string, error) {
	if _, err := os.Stat(packer); err != nil {
		return nil, fmt.Errorf("packer not found (%v): run `make setup` or pass -packer", err)
	}
	bin := filepath.Join(dir, "packer-plugin-nixos")
	logf("building the plugin for packer build")
	for _, args := range [][]string{
		{"generate", "./internal/vm/agentbin"}, // the installer's agent
		{"build", "-trimpath", "-o", bin, "."},
	} {
		build := exec.Command("go", args...)
		build.Dir = fixtures.Root()
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go %s: %v: %s", args[0], err, strings.TrimSpace(string(out)))
		}
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
		run.whole = el
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
	return installSource("bench", system, out) + "\n" + buildBlock("bench")
}

func installSource(name, system, out string) string {
	return fmt.Sprintf(`source "nixos-image" %q {
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  mem_size             = 256
  output_directory     = %q
}
`, name, system, out)
}

func printInstallTable(w io.Writer, c config, rows []*installRow) {
	fmt.Fprintf(w, "### install mode: `packer build` of the test systems\n\n")
	fmt.Fprintf(w, "The real `packer build` with the plugin built from this tree: legacy layout, additional_space 16M, TCG guest with 256 MiB. "+
		"Host write is the root filesystem's, up to its fsync (warm cache), median of %d runs; the guest phases are the builder's own (the install step: from waiting for the installer's kernel and initrd, made in the background since the system was known, "+
		"to the VM's power-off), from the run with the median guest phase; the whole `packer build` is its wall time, median. QEMU peak RSS is the largest VmHWM of the installer VM's process over the runs.\n\n", c.runs)
	fmt.Fprint(w, "| system | closure | host write |")
	for _, p := range installPhases {
		fmt.Fprintf(w, " %s |", p)
	}
	fmt.Fprintln(w, " guest phase | whole `packer build` | QEMU peak RSS |")
	fmt.Fprintln(w, "|---|--:|--:|"+strings.Repeat("--:|", len(installPhases))+"--:|--:|--:|")
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
			fmt.Fprintf(w, "| %s | %s | %s |%s — | — | — |\n", r.name, closure, cell, strings.Repeat(" — |", len(installPhases)))
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
		fmt.Fprintf(w, " %s | %s | %s |\n", guest, dur(r.median(func(x installRun) time.Duration { return x.whole })), human(r.peakRSS()))
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
		whole := small.median(func(x installRun) time.Duration { return x.whole })
		out = append(out, fmt.Sprintf("| %s: whole `packer build` ≤ %s | %s | %s |", small.name, dur(wholeBuildLimit), dur(whole), verdict(whole <= wholeBuildLimit)))
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
