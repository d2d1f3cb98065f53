package agent

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
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
