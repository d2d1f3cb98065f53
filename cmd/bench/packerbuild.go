package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

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
