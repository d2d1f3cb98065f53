package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ptyRows, ptyCols: the terminal Packer draws its progress bar in (a pty
// starts at 0×0, which progress bars take as "no room").
const (
	ptyRows = 40
	ptyCols = 120
)

// openPTY opens a pseudo-terminal pair: the bench reads the master, the
// timed `packer build` gets the slave as its controlling terminal, so Packer
// sees a user's terminal and draws its progress bar.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*os.File, *os.File, error) {
		m.Close()
		return nil, nil, fmt.Errorf("pty: %w", err)
	}
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		return fail(err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		return fail(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(err)
	}
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: ptyRows, Col: ptyCols}); err != nil {
		s.Close()
		return fail(err)
	}
	return m, s, nil
}
