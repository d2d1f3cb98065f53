package agent

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// upLoopback, in a fresh network namespace (lo down, no address), makes
// 127.0.0.1 bindable: what switch-to-configuration-ng's syslog init does
// when there is no /dev/log.
func TestUpLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a new network namespace)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread stays in the new namespace: never unlocked, it
		// ends with this goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		// A datagram to 127.0.0.1, as a syslog client without /dev/log
		// sends it, arrives only once lo is up.
		loop := func() error {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := c.WriteTo([]byte("<14>nixos: hello"), c.LocalAddr()); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 64)
			n, _, err := c.ReadFrom(buf)
			if err == nil && string(buf[:n]) != "<14>nixos: hello" {
				err = fmt.Errorf("received %q", buf[:n])
			}
			return err
		}
		if loop() == nil {
			t.Error("127.0.0.1 works in a fresh namespace already: the test proves nothing")
		}
		if err := upLoopback(); err != nil {
			t.Errorf("upLoopback: %v", err)
			return
		}
		if err := loop(); err != nil {
			t.Errorf("a datagram to 127.0.0.1 after upLoopback: %v", err)
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil || lo.Flags&net.FlagUp == 0 {
			t.Errorf("lo: %+v %v; want it up", lo, err)
		}
		if addrs, _ := lo.Addrs(); len(addrs) == 0 || addrs[0].String() != "127.0.0.1/8" {
			t.Errorf("lo's addresses %v; want 127.0.0.1/8", addrs)
		}
		// Twice is fine: the agent may be restarted by hand.
		if err := upLoopback(); err != nil {
			t.Errorf("upLoopback again: %v", err)
		}
	}()
	<-done
}
