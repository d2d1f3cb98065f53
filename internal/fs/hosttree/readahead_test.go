package hosttree

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
)

// plainWriter hides the Writer's OpenedFile: the Copier then walks without
// reading ahead, as it did before.
type plainWriter struct{ Target }

// tree makes a host tree with small, empty, boundary-sized and large
// files, hard links and symlinks.
func tree(t *testing.T) string {
	src := t.TempDir()
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 600; i++ {
		dir := filepath.Join(src, fmt.Sprintf("d%02d", i%17))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		size := r.Intn(8000)
		switch i % 50 {
		case 0:
			size = 0
		case 1:
			size = smallFile - 1
		case 2:
			size = smallFile
		case 3:
			size = smallFile + 1
		case 4:
			size = 3<<20 + 17
		}
		b := make([]byte, size)
		r.Read(b)
		p := filepath.Join(dir, fmt.Sprintf("f%03d", i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if i%7 == 0 {
			if err := os.Link(p, p+".link"); err != nil {
				t.Fatal(err)
			}
		}
		if i%11 == 0 {
			if err := os.Symlink(filepath.Base(p), p+".sym"); err != nil {
				t.Fatal(err)
			}
		}
	}
	return src
}

func writeImage(t *testing.T, src string, ahead bool) []byte {
	img := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 256 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	w, err := ext4.NewWriter(f, 0, ext4.Options{Size: size, Time: 1})
	if err != nil {
		t.Fatal(err)
	}
	var tgt Target = Writer(w, nil)
	if !ahead {
		tgt = plainWriter{tgt}
	}
	owner := [2]uint32{0, 0}
	c := &Copier{T: tgt, Opts: Options{Owner: &owner}}
	if err := c.Copy(context.Background(), src, "tree"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Reading ahead changes nothing in the image: the same bytes as the walk
// without it.
func TestReadAheadSameImage(t *testing.T) {
	src := tree(t)
	a, b := writeImage(t, src, true), writeImage(t, src, false)
	if !bytes.Equal(a, b) {
		t.Fatalf("read ahead: image %x, without: %x", sha256.Sum256(a), sha256.Sum256(b))
	}
}

// A cancelled copy stops the reader and closes what it opened ahead.
func TestReadAheadCancel(t *testing.T) {
	src := tree(t)
	fds := func() int {
		ents, _ := os.ReadDir("/proc/self/fd")
		return len(ents)
	}
	before, goroutines := fds(), runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	tgt := &cancelAfter{Target: Writer(nil, nil), n: &n, at: 100, cancel: cancel}
	err := (&Copier{T: tgt}).Copy(ctx, src, "tree")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Copy: %v, want context.Canceled", err)
	}
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > goroutines; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before", runtime.NumGoroutine(), goroutines)
		}
	}
	if after := fds(); after > before {
		t.Errorf("%d fds open after, %d before", after, before)
	}
}

// cancelAfter takes opened files without writing them and cancels at the
// at-th.
type cancelAfter struct {
	Target
	n      *int
	at     int
	cancel func()
}

func (c *cancelAfter) Mkdir(ext4.Header) error           { return nil }
func (c *cancelAfter) Symlink(ext4.Header, string) error { return nil }
func (c *cancelAfter) Link(string, uint32) error         { return nil }
func (c *cancelAfter) OpenedFile(ext4.Header, string, *os.File, []byte) (uint32, error) {
	*c.n++
	if *c.n == c.at {
		c.cancel()
	}
	return uint32(*c.n), nil
}
