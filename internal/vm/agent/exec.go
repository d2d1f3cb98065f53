package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// defaultPath is used when an Exec request has no environment; NixOS keeps
// its tools in the system profile, other roots in the usual places.
const defaultPath = "PATH=/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// lookPath finds name in the PATH of env, resolving every path inside root
// (so absolute symlinks such as /bin/sh → /nix/store/… resolve as they
// will after chroot).
func lookPath(root, name string, env []string) (string, error) {
	pathVar := strings.TrimPrefix(defaultPath, "PATH=")
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathVar = v
		}
	}
	if root == "" {
		root = "/"
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("exec: chroot %s: %w", root, err)
	}
	defer unix.Close(rfd)
	for _, dir := range filepath.SplitList(pathVar) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, name)
		fd, err := unix.Openat2(rfd, p, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
		if err != nil {
			continue
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		unix.Close(fd)
		if err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q not found in PATH=%s (inside %s)", name, pathVar, root)
}

func (s *Linux) Exec(ctx context.Context, r *protocol.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (protocol.ExecResult, error) {
	env := r.Env
	if env == nil {
		env = []string{defaultPath}
	}
	path := r.Argv[0]
	if !strings.Contains(path, "/") {
		var err error
		if path, err = lookPath(r.Chroot, path, env); err != nil {
			return protocol.ExecResult{}, err
		}
	}
	cmd := exec.CommandContext(ctx, path)
	cmd.Args = r.Argv
	cmd.Env = env
	cmd.Dir = r.Dir
	if cmd.Dir == "" {
		cmd.Dir = "/" // the agent's own cwd means nothing inside a chroot
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	// Its own process group, so a cancel reaches everything it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: r.Chroot, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Don't let a daemon that inherited stdout, or a host that never closes
	// stdin, hold the request after the command itself ended.
	cmd.WaitDelay = 2 * time.Second

	reaper.Lock() // see reapOrphans: the pid must be known before it can exit unseen
	err := cmd.Start()
	if err == nil {
		reaper.children[cmd.Process.Pid] = true
	}
	reaper.Unlock()
	if err != nil {
		return protocol.ExecResult{}, fmt.Errorf("exec %q: %w", r.Argv, err)
	}
	err = cmd.Wait()
	reaper.Lock()
	delete(reaper.children, cmd.Process.Pid)
	reaper.Unlock()

	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) && !errors.Is(err, exec.ErrWaitDelay) {
		return protocol.ExecResult{}, fmt.Errorf("exec %q: %w", r.Argv, err)
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return protocol.ExecResult{ExitStatus: 128 + int(ws.Signal()), Signal: unix.SignalName(ws.Signal())}, nil
	}
	return protocol.ExecResult{ExitStatus: ws.ExitStatus()}, nil
}
