package qemu

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestVersion(t *testing.T) {
	v, err := New().Version(ctxTimeout(t, 10*time.Second), "")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^\d+\.\d+`).MatchString(v) {
		t.Errorf("version %q", v)
	}
	t.Logf("QEMU %s", v)
}

func TestMissingBinary(t *testing.T) {
	_, err := New().Version(context.Background(), "qemu-does-not-exist")
	if err == nil || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "qemu-does-not-exist not found") {
		t.Errorf("Version: %v", err)
	}
	_, err = New().Start(context.Background(), VMConfig{Binary: "qemu-does-not-exist", Accel: TCG})
	if err == nil || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "qemu-does-not-exist") {
		t.Errorf("Start: %v", err)
	}
	if _, err := New().Version(context.Background(), ""); err == nil {
		t.Log("default binary present, as expected")
	}
}

func TestBootPoweroff(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	c := guestConfig(t, "poweroff", &console)
	start := time.Now()
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), c)
	if err != nil {
		t.Fatal(err)
	}
	evs := collectEvents(v)
	if err := v.Wait(); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	t.Logf("kernel boot to poweroff under TCG: %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(console.String(), "TEST-BOOTED") {
		t.Errorf("marker missing; console:\n%s", console.String())
	}
	if got := v.ShutdownReason(); got != "guest-shutdown" {
		t.Errorf("shutdown reason %q, events %v", got, evs())
	}
	if tail := v.ConsoleTail(3); len(tail) == 0 {
		t.Error("empty console tail")
	}
	assertGone(t, v)
	assertEmptyDir(t, c.WorkDir)
}

func TestShutdownACPI(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), guestConfig(t, "acpi", &console))
	if err != nil {
		t.Fatal(err)
	}
	evs := collectEvents(v)
	waitConsole(t, v, &console, "TEST-ACPI-READY", time.Minute)
	if st, err := v.Status(ctxTimeout(t, 5*time.Second)); err != nil || st != "running" {
		t.Errorf("Status = %q, %v", st, err)
	}
	start := time.Now()
	if err := v.Shutdown(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatalf("Shutdown: %v\nWait: %v\nconsole:\n%s", err, v.Wait(), console.String())
	}
	t.Logf("ACPI shutdown took %s", time.Since(start).Round(time.Millisecond))
	if err := v.Wait(); err != nil {
		t.Errorf("Wait: %v", err)
	}
	names := map[string]Event{}
	for _, e := range evs() {
		names[e.Name] = e
	}
	if _, ok := names["POWERDOWN"]; !ok {
		t.Errorf("no POWERDOWN event: %v", names)
	}
	if e, ok := names["SHUTDOWN"]; !ok || e.Data["reason"] != "guest-shutdown" || e.Time.IsZero() {
		t.Errorf("SHUTDOWN event %+v (ok %v)", e, ok)
	}
	if !strings.Contains(console.String(), "TEST-POWER-BUTTON") {
		t.Error("guest did not see the power button")
	}
	assertGone(t, v)
}

func TestShutdownTimeoutQuits(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), guestConfig(t, "sleep", &console))
	if err != nil {
		t.Fatal(err)
	}
	evs := collectEvents(v)
	waitConsole(t, v, &console, "TEST-BOOTED", time.Minute)
	// No power-button handler in this mode: Shutdown must fall back to quit.
	err = v.Shutdown(ctxTimeout(t, 2*time.Second))
	if !errors.Is(err, ErrShutdownTimeout) {
		t.Errorf("Shutdown: %v", err)
	}
	if err := v.Wait(); err != nil {
		t.Errorf("Wait after quit: %v", err)
	}
	var names []string
	for _, e := range evs() {
		names = append(names, e.Name)
	}
	if !strings.Contains(strings.Join(names, " "), "POWERDOWN") {
		t.Errorf("events %v", names)
	}
	t.Logf("events %v, reason %q", names, v.ShutdownReason())
	assertGone(t, v)
}

func TestQuit(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), guestConfig(t, "sleep", &console))
	if err != nil {
		t.Fatal(err)
	}
	waitConsole(t, v, &console, "TEST-BOOTED", time.Minute)
	start := time.Now()
	if err := v.Quit(); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	t.Logf("quit took %s", time.Since(start).Round(time.Millisecond))
	if err := v.Wait(); err != nil {
		t.Errorf("Wait: %v", err)
	}
	assertGone(t, v)
	if err := v.Quit(); err != nil { // after exit: nothing to do
		t.Errorf("second Quit: %v", err)
	}
	if _, err := v.Status(context.Background()); err == nil {
		t.Error("Status after exit succeeded")
	}
}

func TestKill(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	c := guestConfig(t, "agent", &console)
	c.AgentSocket = filepath.Join(c.WorkDir, "agent.sock")
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), c)
	if err != nil {
		t.Fatal(err)
	}
	waitConsole(t, v, &console, "TEST-BOOTED", time.Minute)
	v.Kill()
	v.Kill() // idempotent
	err = v.Wait()
	var ee *ExitError
	if !errors.As(err, &ee) || !errors.Is(err, errKilled) || len(ee.Console) == 0 {
		t.Errorf("Wait: %v", err)
	}
	assertGone(t, v)
}

func TestContextCancelKills(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	c := guestConfig(t, "agent", &console)
	c.AgentSocket = filepath.Join(c.WorkDir, "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v, err := New().Start(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	waitConsole(t, v, &console, "TEST-BOOTED", time.Minute)
	if _, err := os.Lstat(c.AgentSocket); err != nil {
		t.Errorf("agent socket missing while running: %v", err)
	}
	cancel()
	if err := v.Wait(); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait: %v", err)
	}
	assertGone(t, v)
	assertEmptyDir(t, c.WorkDir)
}

// A cancel during Start (before the guest runs) leaves nothing either.
func TestContextCancelDuringStart(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	c := guestConfig(t, "sleep", &console)
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	time.Sleep(2 * time.Millisecond)
	if v, err := New().Start(ctx, c); err == nil {
		v.Kill()
		t.Fatal("Start with an ended context succeeded")
	}
	assertEmptyDir(t, c.WorkDir)
}

// The agent port reaches the guest and the caller reads from the socket.
func TestAgentSocket(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	c := guestConfig(t, "agent", &console)
	c.AgentSocket = filepath.Join(c.WorkDir, "agent.sock")
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), c)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Kill()
	start := time.Now()
	if err := readHello(ctxTimeout(t, time.Minute), c.AgentSocket); err != nil {
		t.Fatalf("%v; console:\n%s", err, console.String())
	}
	t.Logf("hello over virtio-serial after %s", time.Since(start).Round(time.Millisecond))
	if st, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(v.PID()), "status")); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "VmHWM:") {
				t.Logf("QEMU peak RSS (256 MiB guest, TCG): %s", strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:")))
			}
		}
	}
	if err := v.Quit(); err != nil {
		t.Error(err)
	}
	assertGone(t, v)
}

// readHello dials the agent socket until it answers with the guest's line.
func readHello(ctx context.Context, path string) error {
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			stop := context.AfterFunc(ctx, func() { conn.Close() })
			line, rerr := bufio.NewReader(conn).ReadString('\n')
			stop()
			conn.Close()
			if strings.TrimSpace(line) == "hello-from-guest" {
				return nil
			}
			err = rerr
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// A guest whose init dies panics, resets, and -no-reboot ends QEMU with
// status 0: Wait must still report it, with the console.
func TestGuestPanicIsAnError(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), guestConfig(t, "exit", &console))
	if err != nil {
		t.Fatal(err)
	}
	collectEvents(v)
	err = v.Wait()
	if err == nil || !strings.Contains(err.Error(), "guest-reset") || !strings.Contains(err.Error(), "Kernel panic") {
		t.Errorf("Wait: %v", err)
	}
	assertGone(t, v)
}

func TestBadArgument(t *testing.T) {
	t.Parallel()
	for _, extra := range [][]string{
		{"-bogus-flag"},                   // exits before QMP exists
		{"-device", "no-such-device-xyz"}, // exits during machine setup
	} {
		c := VMConfig{Accel: TCG, WorkDir: t.TempDir(), ExtraArgs: extra}
		start := time.Now()
		v, err := New().Start(ctxTimeout(t, time.Minute), c)
		if err == nil {
			err = v.Wait()
		}
		var ee *ExitError
		if !errors.As(err, &ee) || !strings.Contains(err.Error(), extra[len(extra)-1]) || ee.State == nil || ee.State.ExitCode() == 0 {
			t.Errorf("%v: %v", extra, err)
		}
		t.Logf("%v failed in %s: %v", extra, time.Since(start).Round(time.Millisecond), err)
		assertEmptyDir(t, c.WorkDir)
	}
}

func TestConfigErrors(t *testing.T) {
	code, vars, err := FindOVMF()
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	cases := []struct {
		c    VMConfig
		want string
		key  string
	}{
		{VMConfig{Accel: TCG, EFI: &EFI{Code: "/nonexistent/CODE.fd", Vars: vars}}, "/nonexistent/CODE.fd", "efi_firmware_code"},
		{VMConfig{Accel: TCG, EFI: &EFI{Code: code, Vars: filepath.Join(dir, "missing.fd")}}, "missing.fd", "efi_firmware_vars"},
		{VMConfig{Accel: TCG, EFI: &EFI{Code: code, Vars: "/usr/share/OVMF/OVMF_VARS.fd"}}, "same OVMF build", "efi_firmware_vars"},
		{VMConfig{Accel: TCG, Kernel: "/nonexistent/vmlinuz"}, "kernel file /nonexistent/vmlinuz", ""},
		{VMConfig{Accel: TCG, Disks: []Disk{{Path: "/nonexistent/disk.raw"}}}, "disk file /nonexistent/disk.raw", ""},
		{VMConfig{Accel: "hvf"}, "unknown accelerator", ""},
		{VMConfig{Accel: TCG, AgentSocket: "/" + strings.Repeat("x", 120)}, "at most 107", ""},
	}
	for _, tc := range cases {
		_, err := New().Start(context.Background(), tc.c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want %q, got %v", tc.want, err)
			continue
		}
		var fe *FileError
		if tc.key != "" && (!errors.As(err, &fe) || fe.Key != tc.key) {
			t.Errorf("%v: key %+v, want %s", err, fe, tc.key)
		}
	}
}

// A WorkDir too long for a unix socket falls back to a short private dir.
func TestLongWorkDir(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	c := guestConfig(t, "poweroff", &console)
	c.WorkDir = filepath.Join(c.WorkDir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(c.WorkDir, 0o700); err != nil {
		t.Fatal(err)
	}
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), c)
	if err != nil {
		t.Fatal(err)
	}
	if rd := v.(*vm).runDir; strings.HasPrefix(rd, c.WorkDir) || len(rd) > 90 {
		t.Errorf("run dir %s", rd)
	}
	if err := v.Wait(); err != nil {
		t.Error(err)
	}
	assertGone(t, v)
}

func TestOVMF(t *testing.T) {
	t.Parallel()
	code, tmpl, err := FindOVMF()
	if err != nil {
		t.Skip(err)
	}
	t.Logf("OVMF: %s + %s", code, tmpl)
	dir := t.TempDir()
	vars := filepath.Join(dir, "efi-vars.fd")
	if err := CopyVars(tmpl, vars); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.raw")
	if err := os.Truncate(mustCreate(t, disk), 64<<20); err != nil {
		t.Fatal(err)
	}
	codeSum, tmplSum := fileSum(t, code), fileSum(t, tmpl)

	var console syncBuffer
	c := VMConfig{Accel: TCG, EFI: &EFI{Code: code, Vars: vars}, Disks: []Disk{{Path: disk}},
		Console: &console, WorkDir: dir}
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), c)
	if err != nil {
		t.Fatal(err)
	}
	took := waitConsole(t, v, &console, "BdsDxe", 60*time.Second)
	t.Logf("OVMF reached BdsDxe in %s", took.Round(time.Millisecond))

	// How QEMU opened the flash files proves the wiring: code read-only,
	// vars read-write.
	for path, want := range map[string]int{code: unix.O_RDONLY, vars: unix.O_RDWR} {
		if got, ok := openMode(v.PID(), path); !ok || got != want {
			t.Errorf("%s opened with access mode %d (found %v), want %d", path, got, ok, want)
		}
	}
	// Let the shell come up (OVMF has written its boot options by then).
	waitConsole(t, v, &console, "Shell>", 60*time.Second)
	if err := v.Quit(); err != nil {
		t.Error(err)
	}
	assertGone(t, v)
	if fileSum(t, vars) == tmplSum {
		t.Error("OVMF did not write its vars copy")
	}
	if fileSum(t, code) != codeSum || fileSum(t, tmpl) != tmplSum {
		t.Error("OVMF code or vars template changed")
	}
	if tail := v.ConsoleTail(5); len(tail) == 0 || strings.Contains(strings.Join(tail, ""), "\x1b") {
		t.Errorf("console tail %q", tail)
	}
}

func mustCreate(t *testing.T, path string) string {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

func fileSum(t *testing.T, path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// openMode finds the fd of pid that has path open and returns its access mode.
func openMode(pid int, path string) (int, bool) {
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, _ := os.ReadDir(fdDir)
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(fdDir, e.Name())); err != nil || target != path {
			continue
		}
		info, err := os.ReadFile(filepath.Join(filepath.Dir(fdDir), "fdinfo", e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if f, ok := strings.CutPrefix(line, "flags:"); ok {
				var flags int
				for _, ch := range strings.TrimSpace(f) { // octal
					flags = flags*8 + int(ch-'0')
				}
				return flags & unix.O_ACCMODE, true
			}
		}
	}
	return 0, false
}

func TestFindOVMFPair(t *testing.T) {
	code, vars, err := FindOVMF()
	if err != nil {
		t.Skip(err)
	}
	if !strings.HasSuffix(code, "OVMF_CODE_4M.fd") || !strings.HasSuffix(vars, "OVMF_VARS_4M.fd") {
		t.Errorf("FindOVMF = %s, %s; want Debian's 4M pair", code, vars)
	}
	if err := CopyVars("/nonexistent", filepath.Join(t.TempDir(), "x")); err == nil {
		t.Error("CopyVars of a missing file succeeded")
	}
}

func TestProbeAccelFallsBack(t *testing.T) {
	t.Parallel()
	var console syncBuffer
	c := guestConfig(t, "sleep", &console)
	never := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	start := time.Now()
	p, err := ProbeAccel(ctxTimeout(t, time.Minute), New(), c, never, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe: %+v after %s (KVMUsable: %v)", p, time.Since(start).Round(time.Millisecond), KVMUsable())
	if p.Accel != TCG || p.VM != nil || p.Reason == "" {
		t.Errorf("probe %+v", p)
	}
	if time.Since(start) > 15*time.Second {
		t.Errorf("probe took %s", time.Since(start))
	}
	if pids := processesMentioning(c.WorkDir); len(pids) > 0 {
		t.Errorf("probe VM left running: %v", pids)
	}
	assertEmptyDir(t, c.WorkDir)
}

func TestProbeAccelConfigError(t *testing.T) {
	if KVMUsable() != nil {
		t.Skip("KVM unusable: the probe never starts QEMU")
	}
	_, err := ProbeAccel(context.Background(), New(), VMConfig{Binary: "qemu-does-not-exist"},
		func(context.Context) error { return nil }, time.Second)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("ProbeAccel: %v", err)
	}
}

func TestLineRing(t *testing.T) {
	r := newLineRing(3)
	r.Write([]byte("\x1b[2J\x1b[01;01Ha\r\nb\n"))
	r.Write([]byte("c\nd\ne"))
	if got := strings.Join(r.Tail(10), "|"); got != "b|c|d|e" {
		t.Errorf("tail %q", got)
	}
	if got := strings.Join(r.Tail(2), "|"); got != "d|e" {
		t.Errorf("tail(2) %q", got)
	}
	r.Write([]byte(strings.Repeat("x", 3*maxLine) + "\n"))
	if got := r.Tail(1)[0]; len(got) != maxLine {
		t.Errorf("long line kept %d bytes", len(got))
	}
}
