package qemu

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

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
