package hosttree

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// narPaths dumps each root with the real NAR serialiser (nix-store --dump)
// into a file and returns store paths read from those files.
func narPaths(t testing.TB, roots []string) []StorePath {
	t.Helper()
	imagecheck.RequireTool(t, "nix-store")
	dir := t.TempDir()
	sps := make([]StorePath, len(roots))
	for i, r := range roots {
		nar := filepath.Join(dir, filepath.Base(r)+".nar")
		f, err := os.Create(nar)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("nix-store", "--dump", r)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = f, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("nix-store --dump %s: %v\n%s", r, err, stderr.Bytes())
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		sps[i] = StorePath{Path: r, NAR: func() (io.ReadCloser, error) { return os.Open(nar) }}
	}
	return sps
}

// compareSources walks roots from the host and from their NARs: the calls
// (headers, and in the second walk contents) must be the same, the images
// byte-identical and sound. It returns the image from the host.
func compareSources(t *testing.T, roots []string) string {
	t.Helper()
	nars := narPaths(t, roots)
	h1, h2, hc := walkTwice(t, HostPaths(roots...), true)
	n1, n2, nc := walkTwice(t, nars, true)
	if !slices.Equal(h1, n1) || !slices.Equal(h2, n2) {
		for i := range min(len(h1), len(n1)) {
			if h1[i] != n1[i] {
				t.Fatalf("first walks differ at call %d: host %q, NAR %q", i, h1[i], n1[i])
			}
		}
		t.Fatalf("walks differ: host %d/%d calls, NAR %d/%d", len(h1), len(h2), len(n1), len(n2))
	}
	if hc.Links() != nc.Links() {
		t.Errorf("%d links from the host, %d from NARs", hc.Links(), nc.Links())
	}
	img1, st1 := writeImage(t, HostPaths(roots...))
	img2, st2 := writeImage(t, nars)
	if st1 != st2 {
		t.Errorf("stats: host %+v, NAR %+v", st1, st2)
	}
	if a, b := imagecheck.SHA256File(t, img1), imagecheck.SHA256File(t, img2); a != b {
		t.Fatalf("images differ: host %s, NAR %s", a, b)
	}
	t.Logf("%d calls, %d links, %+v", len(h1), hc.Links(), st1)
	imagecheck.Fsck(t, imagecheck.FS{Image: img1})
	return img1
}

// A closure read from NARs and from the host store gives the same calls and
// the same image, with big files dense (through copy_file_range), with zero
// blocks, and sparse on the host.
func TestClosureNARMatchesHost(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	noise := func(n int) string {
		b := make([]byte, n)
		r.Read(b)
		return string(b)
	}
	dense := noise(300 << 10)
	zeros := noise(8<<10) + strings.Repeat("\x00", 64<<10) + noise(300<<10+5)
	roots := canonicalStore(t,
		"aaa-one/bin/tool*=#!/bin/sh\n",
		"aaa-one/dense="+dense,
		"aaa-one/nested/deeper/empty=",
		"aaa-one/nested/link->../dense",
		"aaa-one/zeros="+zeros,
		"bbb-two/dense="+dense,
		"bbb-two/long->"+strings.Repeat("x/", 40),
		"bbb-two/sparse=",
		"bbb-two/tool=#!/bin/sh\n",
		"bbb-two/zeros*="+zeros,
		"ccc-file=a store path that is a file\n",
		"ddd-link->aaa-one",
	)
	sparse := filepath.Join(roots[1], "sparse")
	if err := os.Chmod(sparse, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(sparse, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), 3<<20)
	f.Close()
	if err := os.Chmod(sparse, 0o444); err != nil {
		t.Fatal(err)
	}
	seal(t, roots)
	compareSources(t, roots)
}

// The NAR is read to its end in every walk, so that the verifying reader's
// final Read, which reports a mismatch with the narinfo, is not skipped; and
// its error stops the walk.
func TestClosureNARReadToTheEnd(t *testing.T) {
	roots := store(t, "aaa-one/a=twin", "bbb-two/b=twin")
	nars := narPaths(t, roots)
	bad := errors.New("NarHash mismatch")
	open := nars[1].NAR
	f := &failAtEOF{}
	nars[1].NAR = func() (io.ReadCloser, error) {
		rc, err := open()
		f.ReadCloser = rc
		return f, err
	}
	c := NewClosure(nars, storeOpts)
	if _, err := c.Walk(context.Background(), Sizer(ext4.NewSizer()), ""); err != nil {
		t.Fatal(err)
	}
	if f.reached != 2 || f.closed != 2 { // the pre-pass and the deciding walk
		t.Errorf("EOF reached %d times, closed %d times; want 2 and 2", f.reached, f.closed)
	}
	f.err = bad
	if _, err := c.Walk(context.Background(), &logTarget{}, ""); !errors.Is(err, bad) {
		t.Fatalf("got %v, want the mismatch", err)
	}
	if f.reached != 3 || f.closed != 3 {
		t.Errorf("EOF reached %d times, closed %d times; want 3 and 3", f.reached, f.closed)
	}
}

// failAtEOF counts the ends of a stream and its closes; with err set it
// returns err instead of io.EOF, as a verifying reader does on a mismatch.
type failAtEOF struct {
	io.ReadCloser
	err             error
	reached, closed int
}

func (f *failAtEOF) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if err == io.EOF {
		f.reached++
		if f.err != nil {
			err = f.err
		}
	}
	return n, err
}

func (f *failAtEOF) Close() error { f.closed++; return f.ReadCloser.Close() }

// closureOf is the sorted closure of a fixture, as the builder lists it.
func closureOf(t *testing.T, fixture string) []string {
	t.Helper()
	roots := fixtures.Build(t, fixture)
	out, err := exec.Command("nix-store", append([]string{"-qR"}, roots...)...).Output()
	if err != nil {
		t.Fatalf("nix-store -qR %s: %v", fixture, err)
	}
	paths := strings.Fields(string(out))
	sort.Strings(paths)
	return paths
}

// Real closures: the host walk gives a canonical store path exactly the
// headers a NAR gives (directories 0555, files 0444 or 0555, symlinks 0777,
// root's, time 1), the images from the host store and from `nix-store
// --dump` NARs are identical and pass e2fsck, and the image's inodes group the
// names exactly as the rule says (small: the host's optimised store links
// empty files too, the image must not).
func TestClosureRealStore(t *testing.T) {
	for _, fixture := range []string{"small", "debian"} {
		t.Run(fixture, func(t *testing.T) {
			if fixture == "debian" && testing.Short() {
				t.Skip("dumps and writes 0.7 GB twice")
			}
			paths := closureOf(t, fixture)
			c := NewClosure(HostPaths(paths...), storeOpts)
			l := &logTarget{}
			if _, err := c.Walk(context.Background(), l, ""); err != nil {
				t.Fatal(err)
			}
			canonical := regexp.MustCompile(`^(dir .* -r-xr-xr-x|file .* (-r--r--r--|-r-xr-xr-x)|symlink .* -rwxrwxrwx) 0:0 1( \d+B #\d+| -> .*)?$|^link `)
			for _, call := range l.calls {
				if !canonical.MatchString(call) {
					t.Fatalf("not a canonical store entry: %s", call)
				}
			}
			img := compareSources(t, paths)
			checkLinks(t, imagecheck.FS{Image: img}, paths)
		})
	}
}

// checkLinks is the oracle for the rule, from the host's bytes and the image
// as debugfs lists it: two regular files share an image inode exactly when
// both are non-empty with the same mode and content, and each inode's link
// count is its number of names.
func checkLinks(t *testing.T, fsys imagecheck.FS, paths []string) {
	t.Helper()
	group := map[string]string{} // image name -> mode and sha256 ("" when empty)
	for _, sp := range paths {
		err := filepath.WalkDir(sp, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(filepath.Dir(sp), p)
			if fi.Size() == 0 {
				group[rel] = ""
				return nil
			}
			data, err := os.ReadFile(p)
			group[rel] = fmt.Sprintf("%v %x", fi.Mode(), sha256.Sum256(data))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	inos := imageFiles(t, fsys)
	if len(inos) != len(group) {
		t.Fatalf("%d regular files in the image, %d in the closure", len(inos), len(group))
	}
	byIno := map[uint32][]string{}
	inoOf := map[string]uint32{} // group -> inode
	for name, g := range group {
		ino, ok := inos[name]
		if !ok {
			t.Fatalf("%s: not in the image", name)
		}
		byIno[ino] = append(byIno[ino], name)
		if g == "" {
			continue
		}
		if prev, ok := inoOf[g]; ok && prev != ino {
			t.Errorf("%s: inode %d, but a twin has inode %d", name, ino, prev)
		}
		inoOf[g] = ino
	}
	var specs []string
	var multi []uint32
	for ino, names := range byIno {
		if len(names) > 1 {
			for _, n := range names[1:] {
				if group[n] != group[names[0]] || group[n] == "" {
					t.Errorf("%s and %s share inode %d but are not twins", names[0], n, ino)
				}
			}
			specs = append(specs, fmt.Sprintf("<%d>", ino))
			multi = append(multi, ino)
		}
	}
	for i, st := range imagecheck.Stat(t, fsys, specs) {
		if st.Links != len(byIno[multi[i]]) {
			t.Errorf("inode %d: link count %d, %d names %q", multi[i], st.Links, len(byIno[multi[i]]), byIno[multi[i]])
		}
	}
	t.Logf("%d regular files, %d inodes, %d shared", len(group), len(byIno), len(multi))
}

// imageFiles lists the image's regular files (by path from the root) and
// their inodes, breadth first with one debugfs batch per level.
func imageFiles(t *testing.T, fsys imagecheck.FS) map[string]uint32 {
	t.Helper()
	files := map[string]uint32{}
	type dir struct {
		ino  uint32
		path string
	}
	next := []dir{{2, ""}}
	for len(next) > 0 {
		reqs := make([]string, len(next))
		for i, d := range next {
			reqs[i] = fmt.Sprintf("ls -p <%d>", d.ino)
		}
		var after []dir
		for i, out := range imagecheck.DebugfsBatch(t, fsys, reqs) {
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				// "/ino/mode/uid/gid/name/size/": a name holds no slash.
				f := strings.Split(l, "/")
				if len(f) != 8 {
					t.Fatalf("debugfs ls -p: unparsable %q", l)
				}
				name := f[5]
				if name == "." || name == ".." || next[i].ino == 2 && name == "lost+found" {
					continue
				}
				ino, err1 := strconv.ParseUint(f[1], 10, 32)
				mode, err2 := strconv.ParseUint(f[2], 8, 32)
				if err1 != nil || err2 != nil {
					t.Fatalf("debugfs ls -p: unparsable %q", l)
				}
				p := filepath.Join(next[i].path, name)
				switch mode & 0o170000 {
				case 0o040000:
					after = append(after, dir{uint32(ino), p})
				case 0o100000:
					files[p] = uint32(ino)
				}
			}
		}
		next = after
	}
	return files
}

// Over NARs the first walk must be the measuring one: it reads a candidate's
// content to hash it, so a Writer cannot have it and says why.
func TestClosureNARWriterNotFirst(t *testing.T) {
	nars := narPaths(t, store(t, "aaa-one/a=twin", "bbb-two/b=twin"))
	_, f := imagecheck.SparseFile(t, "image", 8<<20)
	w, err := ext4.NewWriter(f, 0, ext4.Options{Size: 8 << 20, Time: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewClosure(nars, storeOpts).Walk(context.Background(), Writer(w, nil), "")
	if !errors.Is(err, errConsumed) || !strings.Contains(err.Error(), "aaa-one/a") {
		t.Fatalf("got %v, want %v naming aaa-one/a", err, errConsumed)
	}
}
