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
	"strings"
	"syscall"
	"time"
)

// uiMode is how the timed `packer build` meets its user.
type uiMode string

const (
	// uiPlain: stdout is a pipe, -color=false and no controlling terminal,
	// as in CI; Packer gives the plugin a no-op progress tracker.
	uiPlain uiMode = "plain"
	// uiTerminal: packer runs on a pseudo-terminal in its foreground
	// process group, so it draws its progress bar as for a user.
	uiTerminal uiMode = "terminal"
)

var uiModes = []uiMode{uiTerminal, uiPlain}

func (m uiMode) label() string {
	if m == uiTerminal {
		return "terminal"
	}
	return "non-terminal (CI)"
}

// packerRun is one timed `packer build`.
type packerRun struct {
	packer string
	env    []string
	dir    string   // working directory
	args   []string // after "build" (and -color=false for uiPlain)
	ui     uiMode
	// images are fsynced after packer exits, inside the timed span: the
	// builder syncs too, so this is cheap, but it makes the figure honest.
	images []string
	limit  time.Duration
}

// packerResult: wall time from start to the images' fsync, Packer's output,
// and the largest VmHWM of the plugin's and QEMU's processes descended from
// packer.
type packerResult struct {
	elapsed              time.Duration
	out                  []byte
	pluginRSS, qemuRSS   int64
	pluginSeen, qemuSeen int
}

// drainWait bounds how long output is read after packer exits (a process
// that kept the terminal open must not hang the bench).
const drainWait = 5 * time.Second

func runPacker(ctx context.Context, p packerRun) (packerResult, error) {
	var res packerResult
	cctx, cancel := context.WithTimeout(ctx, p.limit)
	defer cancel()
	args := []string{"build"}
	if p.ui == uiPlain {
		args = append(args, "-color=false")
	}
	cmd := exec.Command(p.packer, append(args, p.args...)...)
	cmd.Dir, cmd.Env = p.dir, p.env
	cmd.WaitDelay = 10 * time.Second
	// A session of its own: no controlling terminal for uiPlain (even when
	// the bench runs in one), the pty for uiTerminal; either way a process
	// group a timeout can kill as a whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var out bytes.Buffer
	drained := make(chan struct{})
	var master, slave *os.File
	switch p.ui {
	case uiTerminal:
		var err error
		if master, slave, err = openPTY(); err != nil {
			return res, err
		}
		defer master.Close()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		// A user's terminal, whatever the bench runs in (make, CI, a pipe).
		cmd.Env = append(append([]string(nil), p.env...), "TERM=xterm-256color")
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
		go func() {
			defer close(drained)
			// Reading ends with EIO once every holder of the slave is gone.
			io.Copy(&out, master)
		}()
	default:
		cmd.Stdout, cmd.Stderr = &out, &out
		close(drained)
	}
	start := time.Now()
	err := cmd.Start()
	if slave != nil {
		slave.Close() // the child holds its own copy
	}
	if err != nil {
		return res, err
	}
	w := newProcWatch(cmd.Process.Pid, pluginComm, qemuComm)
	stopKill := context.AfterFunc(cctx, func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		w.kill(qemuComm)
	})
	stopWatch := w.start()
	err = cmd.Wait()
	stopWatch()
	stopKill()
	if err == nil {
		for _, img := range p.images {
			if err = fsync(img); err != nil {
				break
			}
		}
	}
	res.elapsed = time.Since(start)
	if master != nil {
		select {
		case <-drained:
		case <-time.After(drainWait):
			master.Close()
			<-drained
		}
	}
	res.out = out.Bytes()
	res.pluginRSS, res.qemuRSS = w.peak[pluginComm], w.peak[qemuComm]
	res.pluginSeen, res.qemuSeen = len(w.seen[pluginComm]), len(w.seen[qemuComm])
	if cctx.Err() != nil && ctx.Err() == nil {
		return res, context.DeadlineExceeded
	}
	if err == nil && res.pluginSeen == 0 {
		err = errors.New("no plugin process seen during the build")
	}
	return res, err
}

// packerBuild runs one install-mode `packer build` and returns the
// builder's figures from its output, and the largest VmHWM of any QEMU
// process descended from it.
func packerBuild(ctx context.Context, limit time.Duration, packer string, env []string, dir, tmpl string) (installRun, []byte, error) {
	res, err := runPacker(ctx, packerRun{packer: packer, env: env, dir: dir, args: []string{tmpl}, ui: uiPlain, limit: limit})
	if err != nil {
		return installRun{}, res.out, err
	}
	run, err := parseInstall(res.out)
	if err != nil {
		return run, res.out, err
	}
	if res.qemuSeen == 0 {
		return run, res.out, errors.New("no QEMU process seen during the build")
	}
	run.rss = res.qemuRSS
	return run, res.out, nil
}

var (
	wroteLine     = regexp.MustCompile(`(?m)Wrote \d+ store paths: .* in (\S+)\s*$`)
	installedLine = regexp.MustCompile(`(?m)Installed in (\S+) \(([^)]*)\)\s*$`)
)

// parseWrote reads the builder's "Wrote ... in X" line: its own time for
// the write step.
func parseWrote(out []byte) (time.Duration, error) {
	m := wroteLine.FindSubmatch(out)
	if m == nil {
		return 0, errors.New(`no "Wrote ... store paths ... in" line in packer's output`)
	}
	d, err := time.ParseDuration(string(m[1]))
	if err != nil {
		return 0, fmt.Errorf("host write time: %w", err)
	}
	return d, nil
}

// parseInstall reads the builder's "Wrote ... in X" and "Installed in X
// (boot B, activation A, boot loader L, shutdown S)" lines.
func parseInstall(out []byte) (installRun, error) {
	var run installRun
	var err error
	if run.write, err = parseWrote(out); err != nil {
		return run, err
	}
	m := installedLine.FindSubmatch(out)
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
