package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/cpio"
)

// The test guest: the host's kernel and an initramfs of static busybox and
// an /init whose behaviour the kernel command line picks (tmode=..., which
// the kernel hands to init as an environment variable).
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /m/order); do insmod /m/$m.ko; done
echo TEST-BOOTED
case "$tmode" in
poweroff)
	poweroff -f ;;
exit)
	exit 3 ;;
acpi)
	fd=3
	for e in /sys/class/input/event*; do
		grep -q "Power Button" $e/device/name || continue
		d=/dev/input/${e##*/}
		while [ ! -c $d ]; do sleep 0.1; done
		# Opened before READY, so a press is queued even if head is late.
		eval "exec $fd<$d"
		(head -c 1 <&$fd >/dev/null && echo TEST-POWER-BUTTON && poweroff -f) &
		fd=$((fd+1))
	done
	echo TEST-ACPI-READY ;;
agent)
	for i in $(seq 100); do
		for p in /sys/class/virtio-ports/*; do
			[ "$(cat $p/name 2>/dev/null)" = ` + AgentPortName + ` ] && port=/dev/${p##*/}
		done
		[ -n "$port" ] && break
		sleep 0.1
	done
	echo TEST-AGENT-PORT $port
	while :; do echo hello-from-guest > $port; sleep 1; done ;;
esac
while :; do sleep 1; done
`

// guestModules are loaded in this order (dependencies first): the power
// button and its event device, and virtio-serial for the agent port.
var guestModules = []string{
	"kernel/drivers/acpi/button.ko",
	"kernel/drivers/input/evdev.ko",
	"kernel/drivers/virtio/virtio_ring.ko",
	"kernel/drivers/virtio/virtio.ko",
	"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
	"kernel/drivers/virtio/virtio_pci.ko",
	"kernel/drivers/char/virtio_console.ko",
}

var (
	guestOnce            sync.Once
	guestKernel, guestRD string
	guestMissing         error // a host input is absent: skip
	guestErr             error // our own code failed: fail
	guestDir             string
)

// testGuest returns the kernel and initrd, built once per test binary. It
// skips only when the host lacks an input (a kernel with its modules,
// busybox); a failure to build the initrd from them is a test failure.
func testGuest(t *testing.T) (kernel, rd string) {
	t.Helper()
	guestOnce.Do(func() {
		var in guestInputs
		if in, guestMissing = findGuestInputs(); guestMissing == nil {
			guestKernel = in.kernel
			guestRD, guestErr = buildGuest(in)
		}
	})
	if guestMissing != nil {
		t.Skipf("test guest unavailable: %v", guestMissing)
	}
	if guestErr != nil {
		t.Fatalf("building the test guest: %v", guestErr)
	}
	return guestKernel, guestRD
}

// guestInputs are what the host must provide for the test guest.
type guestInputs struct {
	kernel  string
	busybox []byte
	modules map[string][]byte // by guestModules entry
}

// findGuestInputs reads the host's kernel modules and busybox; its errors
// all mean the host lacks (or will not let us read) one of them.
func findGuestInputs() (guestInputs, error) {
	var in guestInputs
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Strings(kernels)
	var moddir string
	for _, k := range kernels {
		d := filepath.Join("/lib/modules", strings.TrimPrefix(filepath.Base(k), "vmlinuz-"))
		if _, err := os.Stat(filepath.Join(d, "modules.dep")); err == nil {
			in.kernel, moddir = k, d
		}
	}
	if in.kernel == "" {
		return in, fmt.Errorf("no /boot/vmlinuz-* with modules in /lib/modules: %w", os.ErrNotExist)
	}
	var err error
	if in.busybox, err = os.ReadFile("/bin/busybox"); err != nil {
		return in, err
	}
	in.modules = map[string][]byte{}
	for _, m := range guestModules {
		if in.modules[m], err = os.ReadFile(filepath.Join(moddir, m)); err != nil {
			return in, err
		}
	}
	return in, nil
}

// buildGuest writes the initrd with our cpio writer; its errors are ours.
func buildGuest(in guestInputs) (string, error) {
	dir, err := os.MkdirTemp("", "qemu-test-guest-")
	if err != nil {
		return "", err
	}
	guestDir = dir
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	file := func(name string, mode fs.FileMode, data []byte) {
		if err == nil {
			err = w.WriteHeader(&cpio.Header{Name: name, Mode: mode, Size: int64(len(data))})
		}
		if err == nil && len(data) > 0 {
			_, err = w.Write(data)
		}
	}
	for _, d := range []string{"bin", "dev", "proc", "sys", "m"} {
		file(d, fs.ModeDir|0o755, nil)
	}
	file("bin/busybox", 0o755, in.busybox)
	file("init", 0o755, []byte(initScript))
	var order []string
	for _, m := range guestModules {
		name := strings.TrimSuffix(filepath.Base(m), ".ko")
		file("m/"+name+".ko", 0o644, in.modules[m])
		order = append(order, name)
	}
	file("m/order", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		return "", err
	}
	rd := filepath.Join(dir, "initrd.cpio")
	return rd, os.WriteFile(rd, buf.Bytes(), 0o644)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if guestDir != "" {
		os.RemoveAll(guestDir)
	}
	os.Exit(code)
}

// guestConfig is a TCG installer-style VM running the test guest in mode.
func guestConfig(t *testing.T, mode string, console *syncBuffer) VMConfig {
	kernel, rd := testGuest(t)
	return VMConfig{
		Accel:   TCG,
		Kernel:  kernel,
		Initrd:  rd,
		Append:  "console=ttyS0 panic=-1 quiet tmode=" + mode,
		Console: console,
		WorkDir: t.TempDir(),
	}
}

// syncBuffer is a console writer tests can read while QEMU writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitConsole waits until marker appears on the console, failing the test
// (and killing v) on timeout or if QEMU exits first.
func waitConsole(t *testing.T, v VM, console *syncBuffer, marker string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(console.String(), marker) {
		select {
		case <-v.Done():
			t.Fatalf("QEMU exited before %q: %v", marker, v.Wait())
		case <-deadline:
			v.Kill()
			t.Fatalf("no %q within %s; console tail:\n%s", marker, timeout, strings.Join(v.ConsoleTail(20), "\n"))
		case <-tick.C:
		}
	}
	return time.Since(start)
}

// assertEmptyDir fails the test if dir (a VM's WorkDir) holds anything.
func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("WorkDir not empty: %v", ents)
	}
}

// assertGone checks that nothing of v is left: process, sockets, run dir.
func assertGone(t *testing.T, v VM) {
	t.Helper()
	select {
	case <-v.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU still running")
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(v.PID()))); err == nil {
		t.Errorf("process %d still exists", v.PID())
	}
	iv := v.(*vm)
	if _, err := os.Stat(iv.runDir); !os.IsNotExist(err) {
		t.Errorf("run dir %s left behind (%v)", iv.runDir, err)
	}
	if s := iv.cfg.AgentSocket; s != "" {
		if _, err := os.Lstat(s); !os.IsNotExist(err) {
			t.Errorf("agent socket %s left behind (%v)", s, err)
		}
	}
	if pids := processesMentioning(iv.runDir); len(pids) > 0 {
		t.Errorf("processes still mention %s: %v", iv.runDir, pids)
	}
}

// processesMentioning lists PIDs whose command line contains s.
func processesMentioning(s string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// collectEvents gathers v's events until the channel closes.
func collectEvents(v VM) func() []Event {
	var mu sync.Mutex
	var evs []Event
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range v.Events() {
			mu.Lock()
			evs = append(evs, e)
			mu.Unlock()
		}
	}()
	return func() []Event {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		mu.Lock()
		defer mu.Unlock()
		return append([]Event(nil), evs...)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
