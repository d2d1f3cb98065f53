package agent

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// upLoopback brings lo up with 127.0.0.1/8, as a booted system's network
// setup would. switch-to-configuration-ng initialises syslog before it
// installs the boot loader, and with no /dev/log that means binding a UDP
// socket to 127.0.0.1, which fails while lo is down: "Failed to
// initialize logger". Plain ioctls on an AF_INET socket, no ip(8).
func upLoopback() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("lo: socket: %w", err)
	}
	defer unix.Close(fd)
	set := func(what string, req uint, fill func(*unix.Ifreq) error) error {
		ifr, err := unix.NewIfreq("lo")
		if err == nil {
			err = fill(ifr)
		}
		if err == nil {
			err = unix.IoctlIfreq(fd, req, ifr)
		}
		if err != nil {
			return fmt.Errorf("lo: %s: %w", what, err)
		}
		return nil
	}
	if err := set("address 127.0.0.1", unix.SIOCSIFADDR, func(ifr *unix.Ifreq) error { return ifr.SetInet4Addr([]byte{127, 0, 0, 1}) }); err != nil {
		return err
	}
	if err := set("netmask 255.0.0.0", unix.SIOCSIFNETMASK, func(ifr *unix.Ifreq) error { return ifr.SetInet4Addr([]byte{255, 0, 0, 0}) }); err != nil {
		return err
	}
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo: reading its flags: %w", err)
	}
	flags := ifr.Uint16() | unix.IFF_UP
	return set("up", unix.SIOCSIFFLAGS, func(ifr *unix.Ifreq) error { ifr.SetUint16(flags); return nil })
}
