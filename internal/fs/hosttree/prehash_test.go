package hosttree

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
)

// failAfter is a logTarget whose nth file or hard link fails.
type failAfter struct {
	logTarget
	n int
}

var errTarget = errors.New("target full")

func (f *failAfter) File(h ext4.Header, src string) (uint32, error) {
	if f.n--; f.n < 0 {
		return 0, errTarget
	}
	return f.logTarget.File(h, src)
}

func (f *failAfter) Link(name string, ino uint32) error {
	if f.n--; f.n < 0 {
		return errTarget
	}
	return f.logTarget.Link(name, ino)
}

func (f *failAfter) FileFrom(h ext4.Header, r io.Reader) (uint32, error) {
	if f.n--; f.n < 0 {
		return 0, errTarget
	}
	return f.logTarget.FileFrom(h, r)
}

// More twins than the prehasher queues, and walks that stop early: the
// error is the target's, and the prehasher's and the read-ahead's
// goroutines all end.
func TestClosurePrehashStops(t *testing.T) {
	var specs []string
	for i := range 3 * prehashQueue {
		specs = append(specs, fmt.Sprintf("aaa-one/f%04d=twin%d", i, i%7))
	}
	roots := store(t, specs...)
	before := runtime.NumGoroutine()
	for _, n := range []int{0, 3, prehashQueue + 10} {
		_, err := NewClosure(HostPaths(roots...), storeOpts).Walk(context.Background(), &failAfter{n: n}, "")
		if !errors.Is(err, errTarget) {
			t.Fatalf("failing after %d files: got %v, want the target's error", n, err)
		}
	}
	// Every file's key, decided through the prehasher: 7 contents.
	c := NewClosure(HostPaths(roots...), storeOpts)
	if _, err := c.Walk(context.Background(), &logTarget{}, ""); err != nil || c.Links() != 3*prehashQueue-7 {
		t.Fatalf("%v, %d links, want %d", err, c.Links(), 3*prehashQueue-7)
	}
	// The writing walk, with its read-ahead, stopped early too.
	if _, err := c.Walk(context.Background(), &failAfter{n: 5}, ""); !errors.Is(err, errTarget) {
		t.Fatalf("replay failing after 5 files: got %v, want the target's error", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines left running, %d before", n, before)
	}
}

// cancelAfter is a logTarget that cancels the walk's context at its nth
// file, as Ctrl-C does in the middle of a directory.
type cancelAfter struct {
	logTarget
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) File(h ext4.Header, src string) (uint32, error) {
	if c.n--; c.n == 0 {
		c.cancel()
	}
	return c.logTarget.File(h, src)
}

// A walk cancelled in the middle of one directory of twins ends with the
// context's error: the decider, which goes on to the directory's next
// file, never waits for a key the cancelled prehasher will not compute.
func TestClosurePrehashCancelled(t *testing.T) {
	var specs []string
	for i := range 2 * prehashQueue {
		// 64 KiB twins in pairs: the workers are busy, the queue full.
		specs = append(specs, fmt.Sprintf("aaa-one/f%04d=%08d%s", i, i/2, strings.Repeat("x", 64<<10)))
	}
	roots := store(t, specs...)
	for round := range 40 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := NewClosure(HostPaths(roots...), storeOpts).Walk(ctx, &cancelAfter{n: 1 + round%5, cancel: cancel}, "")
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("round %d: got %v, want context.Canceled", round, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: the cancelled walk never ended", round)
		}
		cancel()
	}
}
