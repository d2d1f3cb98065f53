package qemu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// makeRunDir creates the private directory for the QMP socket: in workDir
// when the socket path fits a sockaddr_un, else in a short temp dir.
func makeRunDir(workDir string) (string, error) {
	return socketDir(workDir, "qemu-", "qmp.sock")
}

// SocketDir creates a private temporary directory (prefix + random digits)
// in which a unix socket called name fits a sockaddr_un: in TMPDIR when
// that is short enough, else in /tmp. A long TMPDIR is not an error.
func SocketDir(prefix, name string) (string, error) {
	return socketDir("", prefix, name)
}

func socketDir(workDir, prefix, name string) (string, error) {
	// MkdirTemp appends up to 10 random digits.
	suffix := len("/"+prefix+"1234567890/") + len(name)
	for _, base := range []string{workDir, os.TempDir(), "/tmp"} {
		if base == "" || !filepath.IsAbs(base) && base != workDir {
			continue
		}
		if abs, err := filepath.Abs(base); err == nil && len(abs)+suffix <= maxSocketPath {
			d, err := os.MkdirTemp(abs, prefix)
			if err != nil {
				return "", fmt.Errorf("qemu: creating socket directory: %w", err)
			}
			return d, nil // MkdirTemp makes it 0700
		}
	}
	return "", errors.New("qemu: no directory short enough for a unix socket (set TMPDIR to a short path)")
}

func (v *vm) spawn() error {
	outR, outW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return fmt.Errorf("qemu: %w", err)
	}
	cmd := exec.Command(v.cfg.Binary, v.cfg.args(v.qmpSock)...)
	// Pipes as *os.File: QEMU writes straight into them, exec starts no
	// copying goroutines, so Wait returns as soon as QEMU exits.
	cmd.Stdout, cmd.Stderr = outW, errW
	// snapshot=on overlays and any other QEMU temp file land in runDir,
	// which goes away with it, even after SIGKILL.
	cmd.Env = append(os.Environ(), "TMPDIR="+v.runDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group: the terminal's ^C reaches Packer, which then stops
		// QEMU through us, in order.
		Setpgid: true,
		// Dies with the plugin if the plugin is killed outright.
		Pdeathsig: syscall.SIGKILL,
	}
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return fmt.Errorf("qemu: starting %s: %w", v.cfg.Binary, err)
	}
	v.cmd = cmd

	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		copyConsole(outR, v.cfg.Console, v.console)
		outR.Close()
	}()
	go func() {
		defer readers.Done()
		copyConsole(errR, nil, v.stderr)
		errR.Close()
	}()
	go v.reap(&readers)
	return nil
}

// reap waits for QEMU, then removes what it leaves behind.
func (v *vm) reap(readers *sync.WaitGroup) {
	pid := v.cmd.Process.Pid
	// Observe the exit without reaping, so kill() can signal the process
	// group until exitSeen is set: the PID cannot be reused before Wait.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	v.mu.Lock()
	v.exitSeen = true
	v.mu.Unlock()
	_ = v.cmd.Wait()
	close(v.exited)

	readers.Wait()
	<-v.connectPhase
	if v.mon != nil {
		// QEMU closed its end: go-qemu's reader delivers what it still has
		// buffered (a SHUTDOWN sent just before the exit), then ends, and our
		// pump with it. Disconnect first and go-qemu drops those events.
		select {
		case <-v.pumped:
		case <-time.After(pumpDrain):
		}
		_ = v.mon.Disconnect()
	}
	if v.cfg.AgentSocket != "" {
		removeSocket(v.cfg.AgentSocket)
	}
	_ = os.RemoveAll(v.runDir)

	v.mu.Lock()
	v.err = v.exitError()
	v.mu.Unlock()
	close(v.done)
}

// exitError is Wait's result; v.mu is held.
func (v *vm) exitError() error {
	st := v.cmd.ProcessState
	cause := v.cause
	if cause == nil {
		switch v.reason {
		case "guest-reset", "guest-panic":
			// -no-reboot turned these into an exit with status 0.
			cause = fmt.Errorf("guest ended with %s", v.reason)
		}
	}
	if cause == nil && st.Success() {
		return nil
	}
	if cause == nil {
		cause = errUnexpectedExit
	}
	return &ExitError{
		State:   st,
		Cause:   cause,
		Stderr:  v.stderr.Tail(stderrLines),
		Console: v.console.Tail(errorTailLines),
	}
}

// removeSocket removes path only if it is a socket: the caller chose the
// path, and a file that QEMU did not make there is not ours to delete.
func removeSocket(path string) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path)
	}
}

// kill SIGKILLs QEMU's process group once, recording why.
func (v *vm) kill(cause error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.exitSeen {
		return
	}
	if v.cause == nil {
		v.cause = cause
	}
	_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
}
