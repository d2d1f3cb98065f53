package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Linux is the real System. It works as PID 1 in the installer VM and, for
// tests, as root on any Linux host: it only touches paths it is given and
// only unmounts below them.
type Linux struct {
	// KillAll makes Poweroff kill every other process first, so nothing
	// holds a filesystem busy. Only right when the agent is PID 1.
	KillAll bool
	// ModuleErrors is reported by Hello.
	ModuleErrors []string
	// DeviceWait bounds how long Mount waits for a /dev source to appear
	// (virtio_blk probes asynchronously); 0 means 10 s.
	DeviceWait time.Duration

	mu     sync.Mutex
	mounts []string // mount points the agent made, in order
}

// defaultPath is used when an Exec request has no environment; NixOS keeps
// its tools in the system profile, other roots in the usual places.
const defaultPath = "PATH=/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func (s *Linux) Hello() (protocol.HelloInfo, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return protocol.HelloInfo{}, err
	}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return protocol.HelloInfo{
		Version:      protocol.Version,
		Kernel:       unix.ByteSliceToString(u.Release[:]),
		Uptime:       float64(ts.Nano()) / 1e9,
		ModuleErrors: s.ModuleErrors,
	}, nil
}

func (s *Linux) track(target string) {
	s.mu.Lock()
	s.mounts = append(s.mounts, filepath.Clean(target))
	s.mu.Unlock()
}

// mountFlags maps mount(8) flag words to MS_* bits; the bool says whether
// the word clears them.
var mountFlags = map[string]struct {
	flag  uintptr
	clear bool
}{
	"ro": {unix.MS_RDONLY, false}, "rw": {unix.MS_RDONLY, true},
	"nosuid": {unix.MS_NOSUID, false}, "suid": {unix.MS_NOSUID, true},
	"nodev": {unix.MS_NODEV, false}, "dev": {unix.MS_NODEV, true},
	"noexec": {unix.MS_NOEXEC, false}, "exec": {unix.MS_NOEXEC, true},
	"noatime": {unix.MS_NOATIME, false}, "nodiratime": {unix.MS_NODIRATIME, false},
	"relatime": {unix.MS_RELATIME, false}, "strictatime": {unix.MS_STRICTATIME, false},
	"lazytime": {unix.MS_LAZYTIME, false}, "sync": {unix.MS_SYNCHRONOUS, false},
	"dirsync": {unix.MS_DIRSYNC, false}, "bind": {unix.MS_BIND, false},
	"rbind": {unix.MS_BIND | unix.MS_REC, false}, "remount": {unix.MS_REMOUNT, false},
	"defaults": {0, false}, "async": {unix.MS_SYNCHRONOUS, true},
}

func parseOptions(opts string) (flags uintptr, data string) {
	var rest []string
	for _, o := range strings.Split(opts, ",") {
		if o == "" {
			continue
		}
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		rest = append(rest, o)
	}
	return flags, strings.Join(rest, ",")
}

// waitPath waits for a device node: virtio_blk and the partition scan
// finish asynchronously after the modules load.
func waitPath(ctx context.Context, p string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := os.Stat(p)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Linux) Mount(ctx context.Context, r *protocol.MountRequest) error {
	if r.Source == "" || r.Target == "" {
		return errors.New("mount: source and target are required")
	}
	flags, data := parseOptions(r.Options)
	if strings.HasPrefix(r.Source, "/dev/") {
		wait := s.DeviceWait
		if wait == 0 {
			wait = 10 * time.Second
		}
		if err := waitPath(ctx, r.Source, wait); err != nil {
			return fmt.Errorf("mount: %w", err)
		}
	}
	if err := os.MkdirAll(r.Target, 0o755); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	if err := unix.Mount(r.Source, r.Target, r.FSType, flags&^unix.MS_RDONLY|readOnlyUnlessBind(flags), data); err != nil {
		return fmt.Errorf("mount %s on %s (type %q, options %q): %w", r.Source, r.Target, r.FSType, r.Options, err)
	}
	s.track(r.Target)
	// A bind mount ignores MS_RDONLY until remounted.
	if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
		if err := unix.Mount("", r.Target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("mount: read-only remount of %s: %w", r.Target, err)
		}
	}
	return nil
}

func readOnlyUnlessBind(flags uintptr) uintptr {
	if flags&unix.MS_BIND != 0 {
		return 0
	}
	return flags & unix.MS_RDONLY
}

// BindSystem mirrors what nixos-enter sets up before chroot. The recursive
// binds are made slaves: events from the agent's /dev and /sys still reach
// the chroot, but unmounting the chroot's copies never propagates back.
func (s *Linux) BindSystem(ctx context.Context, r *protocol.BindSystemRequest) error {
	root := filepath.Clean(r.Root)
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return fmt.Errorf("bind_system: %s is not a directory", r.Root)
	}
	in := func(p string) string { return filepath.Join(root, p) }
	if r.EFIVars {
		if _, err := os.Stat("/sys/firmware/efi"); err != nil {
			return errors.New("bind_system: efivars requested but /sys/firmware/efi is absent (the VM did not boot through UEFI)")
		}
	}
	type step struct {
		src, dst, fstype string
		flags            uintptr
		data             string
		mode             fs.FileMode
	}
	steps := []step{
		{"/dev", "dev", "", unix.MS_BIND | unix.MS_REC, "", 0o755},
		{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"/sys", "sys", "", unix.MS_BIND | unix.MS_REC, "", 0o555},
		{"tmpfs", "run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	}
	if r.Tmp {
		steps = append(steps, step{"tmpfs", "tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777})
	}
	for _, st := range steps {
		dst := in(st.dst)
		if err := os.MkdirAll(dst, st.mode); err != nil {
			return fmt.Errorf("bind_system: %w", err)
		}
		if err := unix.Mount(st.src, dst, st.fstype, st.flags, st.data); err != nil {
			return fmt.Errorf("bind_system: mounting %s on %s: %w", st.src, dst, err)
		}
		s.track(dst)
		if st.flags&unix.MS_BIND != 0 {
			if err := unix.Mount("", dst, "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
				return fmt.Errorf("bind_system: making %s a slave: %w", dst, err)
			}
		}
	}
	if r.EFIVars {
		dst := in("sys/firmware/efi/efivars")
		mounted, err := isMountPoint(dst)
		if err != nil {
			return fmt.Errorf("bind_system: %w", err)
		}
		if !mounted {
			if err := unix.Mount("efivarfs", dst, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
				return fmt.Errorf("bind_system: mounting efivarfs on %s: %w", dst, err)
			}
		}
	}
	return nil
}

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

func (s *Linux) Upload(ctx context.Context, r *protocol.UploadRequest, data io.Reader) (err error) {
	dir, base := filepath.Split(filepath.Clean(r.Path))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+base+".upload-*")
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	n, err := io.Copy(f, data)
	if err != nil {
		return fmt.Errorf("upload %s: %w", r.Path, err)
	}
	if n != r.Size {
		return fmt.Errorf("upload %s: got %d of %d bytes", r.Path, n, r.Size)
	}
	// chown first: it clears setuid/setgid, which chmod then sets.
	if err := f.Chown(r.Uid, r.Gid); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if err := unix.Fchmod(int(f.Fd()), r.Mode&0o7777); err != nil {
		return fmt.Errorf("upload: chmod %s: %w", r.Path, err)
	}
	// The VM may be powered off soon after; the rename must not land
	// before the data.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if err := os.Rename(f.Name(), r.Path); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	return nil
}

// ctxWriter stops a copy once ctx is done.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

func (s *Linux) Download(ctx context.Context, path string, w io.Writer) (protocol.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return protocol.FileInfo{}, fmt.Errorf("download: %s is not a regular file", path)
	}
	n, err := io.Copy(ctxWriter{ctx, w}, f)
	if err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download %s: %w", path, err)
	}
	return protocol.FileInfo{Mode: st.Mode & 0o7777, Uid: int(st.Uid), Gid: int(st.Gid), Size: n}, nil
}

func (s *Linux) Remove(ctx context.Context, path string, recursive bool) error {
	if filepath.Clean(path) == "/" {
		return errors.New("remove: refusing to remove /")
	}
	var err error
	if recursive {
		err = os.RemoveAll(path)
	} else {
		err = os.Remove(path)
	}
	if err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	return nil
}

// mountPoints lists the mount points in /proc/self/mountinfo, in mount order.
func mountPoints() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		out = append(out, unescapeMountinfo(f[4]))
	}
	return out, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isMountPoint(p string) (bool, error) {
	mps, err := mountPoints()
	return slices.Contains(mps, filepath.Clean(p)), err
}

func under(p, root string) bool {
	return p == root || root == "/" || strings.HasPrefix(p, root+"/")
}

// Unmount detaches everything mounted at or below target, deepest and
// newest first. A busy filesystem is detached lazily, so the call never
// hangs; what the kernel still holds is flushed when the last user goes.
func (s *Linux) Unmount(ctx context.Context, target string) error {
	target = filepath.Clean(target)
	if target == "/" {
		return errors.New("unmount: refusing to unmount /")
	}
	mps, err := mountPoints()
	if err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	var todo []string
	for _, mp := range mps {
		if under(mp, target) {
			todo = append(todo, mp)
		}
	}
	if len(todo) == 0 {
		return fmt.Errorf("unmount: nothing is mounted at or below %s", target)
	}
	for i := len(todo) - 1; i >= 0; i-- {
		if err := unix.Unmount(todo[i], 0); err != nil && !errors.Is(err, unix.EINVAL) {
			log.Printf("unmount %s: %v; detaching lazily", todo[i], err)
			_ = unix.Unmount(todo[i], unix.MNT_DETACH)
		}
	}
	s.mu.Lock()
	s.mounts = slices.DeleteFunc(s.mounts, func(m string) bool { return under(m, target) })
	s.mu.Unlock()
	if mps, err = mountPoints(); err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	var left []string
	for _, mp := range mps {
		if under(mp, target) {
			left = append(left, mp)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("unmount: still mounted: %s", strings.Join(left, " "))
	}
	return nil
}

func (s *Linux) Sync() error {
	unix.Sync()
	return nil
}

func (s *Linux) Poweroff(ctx context.Context) error {
	if s.KillAll {
		killAll()
	}
	s.mu.Lock()
	mounts := slices.Clone(s.mounts)
	s.mu.Unlock()
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		if ok, _ := isMountPoint(mounts[i]); !ok {
			continue // already gone with a parent
		}
		if err := s.Unmount(ctx, mounts[i]); err != nil {
			errs = append(errs, err)
		}
	}
	unix.Sync()
	return errors.Join(errs...)
}
