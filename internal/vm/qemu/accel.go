package qemu

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// KVMDevice is the device KVM is used through.
const KVMDevice = "/dev/kvm"

// kvmAPIVersion is the only KVM_GET_API_VERSION Linux has ever returned.
const kvmAPIVersion = 12

// KVMUsable reports why KVM cannot be used, or nil: QEMU needs the device
// open read-write, which needs both the node and the permission (group kvm).
func KVMUsable() error {
	fd, err := unix.Open(KVMDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", KVMDevice, err)
	}
	defer unix.Close(fd)
	// KVM_GET_API_VERSION = _IO(KVMIO=0xAE, 0x00)
	v, err := unix.IoctlRetInt(fd, 0xAE00)
	if err != nil {
		return fmt.Errorf("%s: KVM_GET_API_VERSION: %w", KVMDevice, err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%s: unexpected KVM API version %d", KVMDevice, v)
	}
	return nil
}

// KVMSpeedLimit bounds KVMSpeed's loop in ProbeAccel: natively it takes a
// few milliseconds and under TCG tens; a KVM slower than that is not used.
const KVMSpeedLimit = 250 * time.Millisecond

// kvmSpeed is KVMSpeed; tests that need the boot probe past it on a
// machine whose KVM is slow replace it.
var kvmSpeed = KVMSpeed

// Probe is the outcome of ProbeAccel.
type Probe struct {
	// Accel is the accelerator to use.
	Accel Accel
	// VM is the probe VM, still running, when Accel is KVM: ready() has
	// succeeded on it, so the caller goes on with it (and with whatever
	// ready set up, e.g. the agent connection) instead of booting again.
	// It is nil when Accel is TCG: the probe VM is then gone, with its
	// sockets and temp files, and the caller starts a TCG VM.
	VM VM
	// Reason says why KVM was not chosen, one line for the UI; "" for KVM.
	Reason string
}

// ProbeAccel resolves the "auto" accelerator. It tries KVM only if
// KVMUsable and KVMSpeed runs a guest loop within KVMSpeedLimit (a broken
// KVM costs a quarter of a second, not the timeout); then it starts c under KVM (c.Accel is ignored) and calls
// ready, which must block until the guest has shown it runs (the agent's
// hello) or its ctx ends. ready's ctx ends at timeout and also as soon as
// the probe VM exits (QEMU may abort under KVM); a ready error ends the
// probe early. On success the probe VM is handed over running. On any
// failure of KVM the probe VM is killed and waited for, and the result is
// TCG with a Reason.
//
// The error is non-nil only when the problem is not KVM's: ctx ended, or
// the config is invalid (missing binary or file), which would fail under
// TCG as well. No probe VM is left running then.
func ProbeAccel(ctx context.Context, d Driver, c VMConfig, ready func(context.Context) error, timeout time.Duration) (Probe, error) {
	if arch := c.Arch.OrDefault(); !arch.Native() {
		return Probe{Accel: TCG, Reason: fmt.Sprintf("an %s guest on an %s host: KVM runs only the host's architecture; using TCG", arch.Name, runtime.GOARCH)}, nil
	}
	if err := KVMUsable(); err != nil {
		return Probe{Accel: TCG, Reason: fmt.Sprintf("KVM unavailable (%v): using TCG, which is much slower", err)}, nil
	}
	if _, err := kvmSpeed(KVMSpeedLimit); err != nil {
		return Probe{Accel: TCG, Reason: oneLine(err) + "; using TCG"}, nil
	}
	c.Accel = KVM
	if err := c.normalize(); err != nil {
		return Probe{}, err
	}

	vmCtx, cancelVM := context.WithCancel(ctx)
	v, err := d.Start(vmCtx, c)
	if err != nil {
		cancelVM()
		if ctx.Err() != nil {
			return Probe{}, ctx.Err()
		}
		return Probe{Accel: TCG, Reason: "KVM failed to start QEMU: " + oneLine(err) + "; using TCG, which is much slower"}, nil
	}

	rctx, cancelReady := context.WithTimeout(ctx, timeout)
	go func() { // end ready() early if the probe VM dies
		select {
		case <-v.Done():
			cancelReady()
		case <-rctx.Done():
		}
	}()
	start := time.Now()
	rerr := ready(rctx)
	timedOut := errors.Is(rctx.Err(), context.DeadlineExceeded)
	cancelReady()

	if rerr == nil {
		select {
		case <-v.Done():
			rerr = errors.New("the probe VM exited")
		default:
			// Detach vmCtx from the probe's lifetime: the VM now belongs to
			// the caller, bounded by ctx like any other VM.
			go func() {
				select {
				case <-ctx.Done():
				case <-v.Done():
				}
				cancelVM()
			}()
			return Probe{Accel: KVM, VM: v}, nil
		}
	}
	v.Kill()
	cancelVM()
	if ctx.Err() != nil {
		return Probe{}, ctx.Err()
	}
	var why string
	select {
	case <-v.Done():
		if werr := v.Wait(); werr != nil && !errors.Is(werr, errKilled) {
			why = "QEMU under KVM failed: " + oneLine(werr)
		}
	default:
	}
	if why == "" {
		if timedOut {
			why = fmt.Sprintf("the guest did not answer within %s under KVM", timeout)
			if tail := v.ConsoleTail(1); len(tail) > 0 {
				why += fmt.Sprintf(" (console stopped at %q)", tail[0])
			}
		} else {
			why = fmt.Sprintf("the guest failed under KVM after %s: %v", time.Since(start).Round(time.Millisecond), rerr)
		}
	}
	return Probe{Accel: TCG, Reason: why + "; using TCG, which is much slower"}, nil
}

// oneLine keeps an error to its first line, for a UI message.
func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
