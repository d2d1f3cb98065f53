package agentclient

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// A guest that never opens its port: QEMU accepts the chardev connection
// but reads nothing, so the socket fills with Hellos and a write blocks.
// Hello still ends with its context (the KVM probe's fallback and the
// installer's boot timeout rely on it).
func TestHelloEndsWithContextWhenNothingReads(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			held <- c // accepted, never read
		}
	}()
	defer func() {
		select {
		case c := <-held:
			c.Close()
		default:
		}
	}()
	cl, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// Fill the socket first, as 14 s of Hellos do (278 frames here).
	for range 20000 {
		cl.conn.(*net.UnixConn).SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := cl.conn.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	cl.conn.(*net.UnixConn).SetWriteDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := cl.Hello(ctx); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Hello: %v, want the context's deadline", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Hello still blocked in its write 30 s after its context ended")
	}
}
