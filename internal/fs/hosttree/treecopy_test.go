package hosttree

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
)

// recorder is a Target that notes each call, to check the walk itself:
// order, names, modes, ownership, times and hard links.
type recorder struct {
	calls []string
	ino   uint32
}

func (r *recorder) Mkdir(h ext4.Header) error {
	r.calls = append(r.calls, fmt.Sprintf("dir %s %v %d:%d %d", h.Name, h.Mode, h.Uid, h.Gid, h.Mtime))
	return nil
}
func (r *recorder) Symlink(h ext4.Header, target string) error {
	r.calls = append(r.calls, fmt.Sprintf("symlink %s -> %s", h.Name, target))
	return nil
}
func (r *recorder) Link(name string, ino uint32) error {
	r.calls = append(r.calls, fmt.Sprintf("link %s = %d", name, ino))
	return nil
}
func (r *recorder) File(h ext4.Header, src string) (uint32, error) {
	r.ino++
	r.calls = append(r.calls, fmt.Sprintf("file %s %v %d bytes %d:%d %d #%d", h.Name, h.Mode, h.Size, h.Uid, h.Gid, h.Mtime, r.ino))
	return r.ino, nil
}
func (r *recorder) FileFrom(h ext4.Header, _ io.Reader) (uint32, error) { return r.File(h, "") }
func (r *recorder) Bytes(h ext4.Header, data []byte) error              { return nil }

func TestCopyWalk(t *testing.T) {
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "b/sub"), 0o755))
	must(os.WriteFile(filepath.Join(src, "b/sub/x"), []byte("hello"), 0o644))
	must(os.WriteFile(filepath.Join(src, "a"), []byte("12"), 0o755))
	must(os.Link(filepath.Join(src, "a"), filepath.Join(src, "c")))
	must(os.Symlink("b/sub/x", filepath.Join(src, "d")))
	for _, p := range []string{"", "a", "b", "b/sub", "b/sub/x", "d"} {
		must(os.Lchown(filepath.Join(src, p), 1000, 100))
	}
	// After chown, which clears setuid.
	must(os.Chmod(filepath.Join(src, "a"), 0o755|os.ModeSetuid))
	for _, p := range []string{"", "a", "b", "b/sub", "b/sub/x"} {
		must(os.Chtimes(filepath.Join(src, p), timeAt(2000), timeAt(2000)))
	}

	rec := &recorder{}
	max := int64(500)
	cp := &Copier{T: rec, Opts: Options{Owner: &[2]uint32{0, 0}, MaxMtime: &max}}
	must(cp.Copy(context.Background(), src, "top"))
	got := strings.Join(rec.calls, "\n")
	want := strings.Join([]string{
		"dir top -rwxr-xr-x 0:0 500",
		"file top/a urwxr-xr-x 2 bytes 0:0 500 #1",
		"dir top/b -rwxr-xr-x 0:0 500",
		"dir top/b/sub -rwxr-xr-x 0:0 500",
		"file top/b/sub/x -rw-r--r-- 5 bytes 0:0 500 #2",
		"link top/c = 1",
		"symlink top/d -> b/sub/x",
	}, "\n")
	if got != want {
		t.Errorf("walk:\n%s\nwant:\n%s", got, want)
	}
	if cp.Stats != (Stats{Files: 2, Dirs: 3, Symlinks: 1, HardLinks: 1, Bytes: 7}) {
		t.Errorf("stats %+v", cp.Stats)
	}

	// Without options the host's owner and times are kept.
	rec = &recorder{}
	must((&Copier{T: rec}).Copy(context.Background(), filepath.Join(src, "b"), "b"))
	if want := "dir b -rwxr-xr-x 1000:100 2000"; rec.calls[0] != want {
		t.Errorf("first call %q, want %q", rec.calls[0], want)
	}
}

// A FIFO has no place in a Nix store: the walk names it and stops.
func TestCopyRefusesSpecialFiles(t *testing.T) {
	src := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(src, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := (&Copier{T: &recorder{}}).Copy(context.Background(), src, "x")
	if err == nil || !strings.Contains(err.Error(), "pipe: unsupported file type") {
		t.Fatalf("got %v, want an error naming the FIFO", err)
	}
}

// A cancelled context stops the walk.
func TestCopyCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := (&Copier{T: &recorder{}}).Copy(ctx, t.TempDir(), "x"); err != context.Canceled {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func timeAt(sec int64) time.Time { return time.Unix(sec, 0) }
