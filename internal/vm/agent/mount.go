package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

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

// BindSystem mirrors what nixos-enter sets up before chroot (and, with
// BlockLinks, the /dev/block links udev would have made). The recursive
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
	if r.BlockLinks {
		if err := linkBlockDevices("/sys/class/block", in("dev")); err != nil {
			return fmt.Errorf("bind_system: %w", err)
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
