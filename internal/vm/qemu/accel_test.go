package qemu

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// passSpeed lets the boot probe run on a machine whose KVM fails
// KVMSpeed (this CI's), so that its own fallback is tested too.
func passSpeed(t *testing.T) {
	old := kvmSpeed
	kvmSpeed = func(time.Duration) (time.Duration, error) { return time.Millisecond, nil }
	t.Cleanup(func() { kvmSpeed = old })
}

// With the speed check in front, a KVM that runs guests too slowly costs
// about KVMSpeedLimit, not the boot timeout.
func TestProbeAccelSpeedCheck(t *testing.T) {
	if err := KVMUsable(); err != nil {
		t.Skipf("no usable KVM: %v", err)
	}
	if _, err := KVMSpeed(KVMSpeedLimit); err == nil {
		t.Skip("this machine's KVM is fast: the boot probe decides (TestProbeAccelFallsBack)")
	}
	var console syncBuffer
	c := guestConfig(t, "sleep", &console)
	started := false
	ready := func(ctx context.Context) error { started = true; return nil }
	p, err := ProbeAccel(ctxTimeout(t, time.Minute), New(), c, ready, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if p.Accel != TCG || p.VM != nil || !strings.Contains(p.Reason, "too slowly") || started {
		t.Errorf("probe %+v (a VM was started: %v)", p, started)
	}
	assertEmptyDir(t, c.WorkDir)
}

func TestProbeAccelFallsBack(t *testing.T) {
	passSpeed(t)
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
	passSpeed(t)
	_, err := ProbeAccel(context.Background(), New(), VMConfig{Binary: "qemu-does-not-exist"},
		func(context.Context) error { return nil }, time.Second)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("ProbeAccel: %v", err)
	}
}
