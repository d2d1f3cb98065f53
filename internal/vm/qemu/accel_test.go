package qemu

import (
	"context"
	"errors"
	"testing"
	"time"
)

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
