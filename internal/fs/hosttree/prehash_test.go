package hosttree

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
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
