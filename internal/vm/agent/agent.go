// Package agent is the installer VM's PID 1: the plugin binary itself,
// copied into the initrd (initrd.Build) as /init; main calls Main when
// IsAgent says so. It mounts the pseudo filesystems, loads the modules
// listed in the initrd, brings lo up, opens the virtio-serial port named
// protocol.PortName and serves requests on it with Serve. Everything it
// logs goes to /dev/console prefixed "[agent]".
package agent

import (
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// IsAgent reports whether this process should be the guest agent: it is
// PID 1 started as "init" (the kernel runs /init from the initrd), or it
// was started as "nixos-agent" (for running the agent by hand under another
// init). Both name checks keep a plugin that happens to be PID 1 in a
// container from mistaking itself for the agent.
func IsAgent() bool {
	base := filepath.Base(os.Args[0])
	return base == "nixos-agent" || (os.Getpid() == 1 && base == "init")
}

// portWait bounds the wait for virtio_console to create the agent's port.
const portWait = 10 * time.Second

// Main runs the agent and never returns. As PID 1 it mounts /proc, /sys,
// /dev and /run, loads the initrd's modules, brings lo up, and on
// poweroff or a fatal error powers the VM off (so QEMU exits); otherwise
// it exits.
func Main() {
	pid1 := os.Getpid() == 1
	log.SetFlags(0)
	log.SetPrefix("[agent] ")
	defer func() {
		if r := recover(); r != nil {
			fatal(pid1, "panic: %v\n%s", r, debug.Stack())
		}
	}()
	start := time.Now()
	if pid1 {
		if err := mountPseudo(); err != nil {
			fatal(pid1, "%v", err)
		}
		if err := setWriteback("/proc/sys/vm"); err != nil {
			fatal(pid1, "%v", err)
		}
		// The kernel gave us /dev/console from the initrd's node; reopen it
		// on devtmpfs so the log survives anything done to the initrd's /dev.
		if c, err := os.OpenFile("/dev/console", os.O_WRONLY|syscall.O_NOCTTY, 0); err == nil {
			log.SetOutput(c)
		}
		go reapOrphans()
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	log.Printf("starting (version %s, kernel %s)", protocol.Version, unix.ByteSliceToString(u.Release[:]))
	modErrs := loadModules("/lib/modules")
	if pid1 {
		// Not fatal: only what needs 127.0.0.1 fails, and says so.
		if err := upLoopback(); err != nil {
			log.Printf("%v", err)
		}
	}
	port, err := findPort(portWait)
	if err != nil {
		if len(modErrs) > 0 {
			err = fmt.Errorf("%w (module errors: %s)", err, strings.Join(modErrs, "; "))
		}
		fatal(pid1, "%v", err)
	}
	log.Printf("serving on %s after %v", port, time.Since(start).Round(time.Millisecond))
	sys := &Linux{KillAll: pid1, ModuleErrors: modErrs}
	for {
		f, err := os.OpenFile(port, os.O_RDWR, 0)
		if err != nil {
			fatal(pid1, "opening %s: %v", port, err)
		}
		err = Serve(f, sys)
		f.Close()
		if errors.Is(err, ErrPoweroff) {
			log.Printf("powering off")
			if !pid1 {
				os.Exit(0)
			}
			powerOff()
		}
		// EOF: the host closed its socket. The port reads EOF until it
		// comes back, so poll instead of spinning.
		log.Printf("host disconnected (%v); waiting for it", err)
		time.Sleep(200 * time.Millisecond)
	}
}

// fatal reports on the console and powers off, so a broken agent ends the
// VM instead of leaving the host waiting for its timeout.
func fatal(pid1 bool, format string, args ...any) {
	log.Printf("FATAL: "+format, args...)
	if !pid1 {
		os.Exit(1)
	}
	powerOff()
}

func powerOff() {
	unix.Sync()
	// Give virtio-serial a moment to hand QEMU the last response.
	time.Sleep(100 * time.Millisecond)
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	log.Printf("reboot(POWER_OFF): %v", err)
	// PID 1 must not exit (that panics the kernel); wait to be stopped.
	select {}
}

func mountPseudo() error {
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	// Not essential, but commands run in a chroot with bound /dev expect it.
	_ = os.MkdirAll("/dev/pts", 0o755)
	_ = unix.Mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=620,ptmxmode=666")
	return nil
}

// loadModules loads the modules initrd.Build listed in dir/load-order, in
// that order, and returns one message per failure. A failure is not fatal
// here: the op that needs the module reports a precise error later.
func loadModules(dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "load-order"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return []string{err.Error()}
	}
	start := time.Now()
	var errs []string
	n := 0
	for _, name := range strings.Fields(string(b)) {
		err := loadModule(filepath.Join(dir, name))
		if errors.Is(err, unix.ENODEV) {
			// The module's hardware is absent: efivarfs without UEFI.
			log.Printf("module %s: not applicable (%v)", name, err)
			continue
		}
		if err != nil {
			msg := fmt.Sprintf("%s: %v", name, err)
			log.Printf("module %s", msg)
			errs = append(errs, msg)
			continue
		}
		n++
	}
	log.Printf("loaded %d modules in %v", n, time.Since(start).Round(time.Millisecond))
	return errs
}

// loadModule loads one plain .ko. initrd.Build decompresses modules on
// the host: the kernels NixOS builds lack CONFIG_MODULE_DECOMPRESS, so
// finit_module's MODULE_INIT_COMPRESSED_FILE is never relied on.
func loadModule(p string) error {
	if !strings.HasSuffix(p, ".ko") {
		return fmt.Errorf("%s is not a plain .ko file: the installer initrd ships modules decompressed (initrd.Build), so this initrd was not built by this plugin", filepath.Base(p))
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err == nil || errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// findPort waits for virtio_console to name the agent's port and for
// devtmpfs to create its node.
func findPort(wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		var seen []string
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				continue
			}
			name := strings.TrimSpace(string(b))
			seen = append(seen, name)
			if name == protocol.PortName {
				dev := "/dev/" + filepath.Base(filepath.Dir(n))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %s after %v (ports seen: %q); is QEMU given -device virtserialport,name=%s?", protocol.PortName, wait, seen, protocol.PortName)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reaper lets PID 1 reap orphans without stealing the exit status of the
// commands Exec waits for: those are registered in children while the
// lock is held around their start.
var reaper = struct {
	sync.Mutex
	children map[int]bool
}{children: map[int]bool{}}

func reapOrphans() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGCHLD)
	tick := time.NewTicker(5 * time.Second)
	for {
		select {
		case <-ch:
		case <-tick.C:
		}
		reaper.Lock()
		for _, pid := range zombies() {
			if !reaper.children[pid] {
				var ws unix.WaitStatus
				_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			}
		}
		reaper.Unlock()
	}
}

// zombies lists our children that have exited and wait to be reaped.
func zombies() []int {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces and parentheses; fields follow the last ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) >= 2 && f[0] == "Z" && f[1] == strconv.Itoa(self) {
			out = append(out, pid)
		}
	}
	return out
}

// killAll stops every other process before the final unmounts, waiting
// (briefly) until they are gone.
func killAll() {
	_ = unix.Kill(-1, unix.SIGKILL)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if others() == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	log.Printf("processes still alive after SIGKILL: %d", others())
}

// others counts user processes other than us (kernel threads have no
// cmdline and ignore SIGKILL).
func others() int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && len(b) > 0 {
			n++
		}
	}
	return n
}
