package hosttree

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// logTarget is a Target that notes every call with the whole header; with
// data it also reads each file's content and notes its sha256.
type logTarget struct {
	calls []string
	ino   uint32
	data  bool
}

func (l *logTarget) Mkdir(h ext4.Header) error {
	l.calls = append(l.calls, fmt.Sprintf("dir %s %v %d:%d %d", h.Name, h.Mode, h.Uid, h.Gid, h.Mtime))
	return nil
}

func (l *logTarget) Symlink(h ext4.Header, target string) error {
	l.calls = append(l.calls, fmt.Sprintf("symlink %s %v %d:%d %d -> %s", h.Name, h.Mode, h.Uid, h.Gid, h.Mtime, target))
	return nil
}

func (l *logTarget) Link(name string, ino uint32) error {
	l.calls = append(l.calls, fmt.Sprintf("link %s = #%d", name, ino))
	return nil
}

func (l *logTarget) File(h ext4.Header, src string) (uint32, error) {
	if !l.data {
		return l.file(h, nil)
	}
	f, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return l.file(h, f)
}

func (l *logTarget) FileFrom(h ext4.Header, r io.Reader) (uint32, error) {
	if !l.data {
		r = nil
	}
	return l.file(h, r)
}

func (l *logTarget) file(h ext4.Header, r io.Reader) (uint32, error) {
	l.ino++
	sum := ""
	if r != nil {
		s := sha256.New()
		n, err := io.Copy(s, r)
		if err != nil {
			return 0, err
		}
		if n != h.Size {
			return 0, fmt.Errorf("%s: %d bytes, header says %d", h.Name, n, h.Size)
		}
		sum = " " + hex.EncodeToString(s.Sum(nil))[:12]
	}
	l.calls = append(l.calls, fmt.Sprintf("file %s %v %d:%d %d %dB #%d%s", h.Name, h.Mode, h.Uid, h.Gid, h.Mtime, h.Size, l.ino, sum))
	return l.ino, nil
}

func (l *logTarget) Bytes(h ext4.Header, data []byte) error {
	_, err := l.file(h, strings.NewReader(string(data)))
	return err
}

var (
	rootOwner = [2]uint32{0, 0}
	storeOpts = Options{Owner: &rootOwner}
	epochOne  = int64(1)
	// for trees not sealed: times clamped, as deterministic builds do
	clampOpts = Options{Owner: &rootOwner, MaxMtime: &epochOne}
	imageRoot = ext4.Header{Mode: 0o755, Mtime: 1}
)

// canonicalStore writes store paths as specs say, under a new directory, with
// a canonical store's metadata (files 0444 or 0555, directories 0555, time
// 1), and returns the paths' host paths in order. Specs: "p/file=content",
// "p/file*=content" (executable), "p/link->target", "p/file==p/other" (a host
// hard link to an earlier file).
func canonicalStore(t *testing.T, specs ...string) []string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
	var roots []string
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range specs {
		name, rest, _ := strings.Cut(s, "=")
		name, target, isLink := strings.Cut(name, "->")
		name, exec := strings.CutSuffix(name, "*")
		p := filepath.Join(dir, name)
		if root := filepath.Join(dir, strings.Split(name, "/")[0]); !slices.Contains(roots, root) {
			roots = append(roots, root)
		}
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		switch {
		case isLink:
			must(os.Symlink(target, p))
		case strings.HasPrefix(rest, "="):
			must(os.Link(filepath.Join(dir, rest[1:]), p))
		default:
			mode := os.FileMode(0o444)
			if exec {
				mode = 0o555
			}
			must(os.WriteFile(p, []byte(rest), mode))
			must(os.Chmod(p, mode))
		}
	}
	return roots
}

// seal gives the trees the store's directory modes and times.
func seal(t *testing.T, roots []string) {
	t.Helper()
	for _, r := range roots {
		var dirs []string
		filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			if d.IsDir() {
				dirs = append(dirs, p)
			} else {
				ts := []unix.Timespec{{Sec: 1}, {Sec: 1}}
				if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					t.Fatal(err)
				}
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			if err := os.Chmod(d, 0o555); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(d, timeAt(1), timeAt(1))
		}
	}
}

// store is canonicalStore, sealed.
func store(t *testing.T, specs ...string) []string {
	t.Helper()
	roots := canonicalStore(t, specs...)
	seal(t, roots)
	return roots
}

// walkTwice makes the first (deciding) and the second (replaying) walk into
// logTargets and returns both logs and the closure.
func walkTwice(t *testing.T, paths []StorePath, data bool) (first, second []string, c *Closure) {
	t.Helper()
	c = NewClosure(paths, storeOpts)
	l1, l2 := &logTarget{}, &logTarget{data: data}
	st1, err := c.Walk(context.Background(), l1, "")
	if err != nil {
		t.Fatal(err)
	}
	st2, err := c.Walk(context.Background(), l2, "")
	if err != nil {
		t.Fatal(err)
	}
	if st1 != st2 {
		t.Errorf("stats %+v, then %+v", st1, st2)
	}
	return l1.calls, l2.calls, c
}

func base(p string) string { return filepath.Base(p) }

// Identical non-empty files with the same mode are one inode across and
// within store paths; a different executable bit, empty files, a same-size
// different content, symlinks and directories are not linked. The second walk
// makes the same calls.
func TestClosureLinksTwins(t *testing.T) {
	roots := store(t,
		"aaa-one/bin/tool*=#!tool",
		"aaa-one/share/doc=some doc",
		"aaa-one/share/empty=",
		"aaa-one/share/plain=#!tool", // the tool's bytes, not executable
		"bbb-two/bin/tool*=#!tool",
		"bbb-two/doc=some doc",
		"bbb-two/dog=some dog", // same size as doc
		"bbb-two/empty=",
		"bbb-two/lib/again=some doc",
		"bbb-two/link->doc",
		"bbb-two/unique=only here",
	)
	first, second, c := walkTwice(t, HostPaths(roots...), true)
	want := []string{
		"dir aaa-one -r-xr-xr-x 0:0 1",
		"dir aaa-one/bin -r-xr-xr-x 0:0 1",
		"file aaa-one/bin/tool -r-xr-xr-x 0:0 1 6B #1",
		"dir aaa-one/share -r-xr-xr-x 0:0 1",
		"file aaa-one/share/doc -r--r--r-- 0:0 1 8B #2",
		"file aaa-one/share/empty -r--r--r-- 0:0 1 0B #3",
		"file aaa-one/share/plain -r--r--r-- 0:0 1 6B #4",
		"dir bbb-two -r-xr-xr-x 0:0 1",
		"dir bbb-two/bin -r-xr-xr-x 0:0 1",
		"link bbb-two/bin/tool = #1",
		"link bbb-two/doc = #2",
		"file bbb-two/dog -r--r--r-- 0:0 1 8B #5",
		"file bbb-two/empty -r--r--r-- 0:0 1 0B #6",
		"dir bbb-two/lib -r-xr-xr-x 0:0 1",
		"link bbb-two/lib/again = #2",
		"symlink bbb-two/link -rwxrwxrwx 0:0 1 -> doc",
		"file bbb-two/unique -r--r--r-- 0:0 1 9B #7",
	}
	for i, l := range second { // the content hashes the second log has
		if j := strings.LastIndexByte(l, ' '); strings.HasPrefix(l, "file ") && j > 0 {
			second[i] = l[:j]
		}
	}
	if got := strings.Join(first, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("first walk:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if !slices.Equal(first, second) {
		t.Errorf("second walk:\n%s\nfirst:\n%s", strings.Join(second, "\n"), strings.Join(first, "\n"))
	}
	if c.Links() != 3 {
		t.Errorf("%d links, want 3", c.Links())
	}
}

// Two stores with the same files, one with its twins (and empty files) as
// separate inodes, the other with them hard-linked as `nix-store --optimise`
// leaves them, give the same calls and byte-identical images.
func TestClosureIgnoresHostLinks(t *testing.T) {
	specs := []string{
		"aaa-one/a=shared content",
		"aaa-one/b=shared content",
		"aaa-one/empty=",
		"aaa-one/x*=shared content",
		"bbb-two/c=shared content",
		"bbb-two/empty=",
		"bbb-two/y*=shared content",
	}
	linked := slices.Clone(specs)
	linked[1] = "aaa-one/b==aaa-one/a"
	linked[4] = "bbb-two/c==aaa-one/a"
	linked[5] = "bbb-two/empty==aaa-one/empty"
	linked[6] = "bbb-two/y==aaa-one/x"
	separate, shared := store(t, specs...), store(t, linked...)

	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(shared[1], "c"), &st); err != nil || st.Nlink != 3 {
		t.Fatalf("the linked store's twins: %v, %d links", err, st.Nlink)
	}
	log1, log2, _ := walkTwice(t, HostPaths(separate...), false)
	log3, log4, _ := walkTwice(t, HostPaths(shared...), false)
	rename := func(l []string) string {
		s := strings.Join(l, "\n")
		s = strings.ReplaceAll(s, base(filepath.Dir(separate[0])), "")
		return strings.ReplaceAll(s, base(filepath.Dir(shared[0])), "")
	}
	if rename(log1) != rename(log3) || rename(log2) != rename(log4) {
		t.Errorf("separate inodes:\n%s\nhost links:\n%s", rename(log1), rename(log3))
	}
	if !strings.Contains(rename(log1), "file bbb-two/empty") {
		t.Errorf("an empty file was linked:\n%s", rename(log1))
	}

	img1, st1 := writeImage(t, HostPaths(separate...))
	img2, st2 := writeImage(t, HostPaths(shared...))
	if st1 != st2 || st1.HardLinks != 3 {
		t.Errorf("stats %+v and %+v, want 3 hard links each", st1, st2)
	}
	if a, b := imagecheck.SHA256File(t, img1), imagecheck.SHA256File(t, img2); a != b {
		t.Errorf("images differ: %s and %s", a, b)
	}
	imagecheck.Fsck(t, imagecheck.FS{Image: img1})
}

// writeImage plans the closure with a Sizer, writes it with a Writer through
// the same Closure, and returns the image file.
func writeImage(t testing.TB, paths []StorePath) (string, Stats) {
	t.Helper()
	ctx := context.Background()
	c := NewClosure(paths, storeOpts)
	s := ext4.NewSizer()
	if err := s.SetRoot(imageRoot); err != nil {
		t.Fatal(err)
	}
	st1, err := c.Walk(ctx, Sizer(s), "")
	if err != nil {
		t.Fatal(err)
	}
	size, inodes := s.Plan(0)
	img, f := imagecheck.SparseFile(t, "image", size)
	w, err := ext4.NewWriter(f, 0, ext4.Options{Size: size, Inodes: inodes, Time: 1, UUID: [16]byte{1}, HashSeed: [16]byte{2}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetRoot(imageRoot); err != nil {
		t.Fatal(err)
	}
	st2, err := c.Walk(ctx, Writer(w, nil), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if st1 != st2 {
		t.Fatalf("sizing walk %+v, writing walk %+v", st1, st2)
	}
	return img, st2
}

// The second walk refuses a closure with a regular file more or less than the
// first walk saw. It does not hash again: a twin changed in place (same size)
// is still linked, as the first walk decided.
func TestClosureRefusesChangedTree(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		change func(roots []string) error
		want   string
	}{
		{"added", func(r []string) error { return os.WriteFile(filepath.Join(r[1], "new"), []byte("x"), 0o444) },
			"the closure changed since it was measured: 3 regular files then, 4 or more now"},
		{"removed", func(r []string) error { return os.Remove(filepath.Join(r[1], "b")) },
			"the closure changed since it was measured: 3 regular files then, 2 now"},
		{"rewritten", func(r []string) error { return os.WriteFile(filepath.Join(r[1], "b"), []byte("TWIN"), 0o444) }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			roots := canonicalStore(t, "aaa-one/a=twin", "bbb-two/b=twin", "bbb-two/c=other")
			c := NewClosure(HostPaths(roots...), clampOpts)
			if _, err := c.Walk(ctx, &logTarget{}, ""); err != nil {
				t.Fatal(err)
			}
			if err := tc.change(roots); err != nil {
				t.Fatal(err)
			}
			l := &logTarget{}
			_, err := c.Walk(ctx, l, "")
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want == "" && !slices.Contains(l.calls, "link bbb-two/b = #1"):
				t.Errorf("the second walk decided again:\n%s", strings.Join(l.calls, "\n"))
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// A content shared by more files than ext4 gives one inode names starts a new
// inode when the first is full.
func TestClosureLinkLimit(t *testing.T) {
	defer func(n uint32) { maxNames = n }(maxNames)
	maxNames = 3
	var specs []string
	for i := range 7 {
		specs = append(specs, fmt.Sprintf("aaa-one/f%d=same", i))
	}
	first, second, c := walkTwice(t, HostPaths(store(t, specs...)...), false)
	want := []string{
		"dir aaa-one -r-xr-xr-x 0:0 1",
		"file aaa-one/f0 -r--r--r-- 0:0 1 4B #1",
		"link aaa-one/f1 = #1",
		"link aaa-one/f2 = #1",
		"file aaa-one/f3 -r--r--r-- 0:0 1 4B #2",
		"link aaa-one/f4 = #2",
		"link aaa-one/f5 = #2",
		"file aaa-one/f6 -r--r--r-- 0:0 1 4B #3",
	}
	if !slices.Equal(first, want) || !slices.Equal(second, want) || c.Links() != 4 {
		t.Errorf("first walk:\n%s\nsecond:\n%s\nwant:\n%s", strings.Join(first, "\n"), strings.Join(second, "\n"), strings.Join(want, "\n"))
	}
}

// A failed first walk leaves nothing decided: the next walk decides afresh.
func TestClosureFirstWalkFails(t *testing.T) {
	roots := canonicalStore(t, "aaa-one/a=twin", "bbb-two/b=twin")
	c := NewClosure(HostPaths(append(roots, filepath.Join(t.TempDir(), "missing"))...), clampOpts)
	if _, err := c.Walk(context.Background(), &logTarget{}, ""); err == nil || !os.IsNotExist(err) {
		t.Fatalf("got %v, want the missing path", err)
	}
	c.paths = c.paths[:2]
	l := &logTarget{}
	if _, err := c.Walk(context.Background(), l, ""); err != nil || c.Links() != 1 {
		t.Fatalf("%v, %d links:\n%s", err, c.Links(), strings.Join(l.calls, "\n"))
	}
}

// A cancelled context stops the walk.
func TestClosureCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	roots := canonicalStore(t, "aaa-one/a=x")
	if _, err := NewClosure(HostPaths(roots...), storeOpts).Walk(ctx, &logTarget{}, ""); err != context.Canceled {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}
