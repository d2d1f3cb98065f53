package cpio

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

type entry struct {
	hdr  Header
	data string
}

// sample covers every padding residue for names and data, the three common
// types, special permission bits and a non-zero mtime.
func sample() []entry {
	return []entry{
		{hdr: Header{Name: "bin", Mode: fs.ModeDir | 0o755, Mtime: 1700000000}},
		{hdr: Header{Name: "bin/busybox", Mode: 0o755, Mtime: 1700000001, Size: 5}, data: "hello"},
		{hdr: Header{Name: "bin/sh", Mode: fs.ModeSymlink | 0o777, Linkname: "busybox"}},
		{hdr: Header{Name: "empty", Mode: 0o600}},
		{hdr: Header{Name: "a", Mode: 0o644, Size: 1}, data: "x"},
		{hdr: Header{Name: "ab", Mode: 0o644, Size: 2}, data: "xy"},
		{hdr: Header{Name: "abc", Mode: 0o640, Size: 3, Uid: 12, Gid: 34}, data: "xyz"},
		{hdr: Header{Name: "abcd", Mode: 0o644, Size: 4}, data: "wxyz"},
		{hdr: Header{Name: "tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777}},
		{hdr: Header{Name: "suid", Mode: fs.ModeSetuid | 0o755, Size: 6}, data: "setuid"},
		{hdr: Header{Name: "dev", Mode: fs.ModeDir | 0o755}},
		{hdr: Header{Name: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Devmajor: 5, Devminor: 1}},
		{hdr: Header{Name: "lib/abs", Mode: fs.ModeSymlink | 0o777, Linkname: "/bin/busybox"}},
	}
}

func build(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := w.WriteHeader(&h); err != nil {
			t.Fatalf("WriteHeader %s: %v", h.Name, err)
		}
		if e.data != "" {
			if _, err := w.Write([]byte(e.data)); err != nil {
				t.Fatalf("Write %s: %v", h.Name, err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestLayout walks the archive with a minimal reader to check the fields the
// kernel relies on: sequential inodes, nlink, 4-byte alignment, trailer.
func TestLayout(t *testing.T) {
	b := build(t, sample())
	if len(b)%blockSize != 0 {
		t.Fatalf("archive length %d not a multiple of %d", len(b), blockSize)
	}
	off := 0
	field := func(i int) uint64 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("field %d at %d: %v", i, off, err)
		}
		return v
	}
	want := sample()
	for i := 0; ; i++ {
		if off%4 != 0 || string(b[off:off+6]) != magic {
			t.Fatalf("entry %d: bad header at offset %d", i, off)
		}
		ino, mode, nlink, size, namesize := field(0), field(1), field(4), field(6), field(11)
		name := string(b[off+headerLen : off+headerLen+int(namesize)-1])
		off += headerLen + int(namesize)
		off += int(pad4(int64(off)))
		off += int(size)
		off += int(pad4(int64(off)))
		if name == trailer {
			if i != len(want) || ino != 0 || nlink != 1 {
				t.Fatalf("trailer: index %d ino %d nlink %d", i, ino, nlink)
			}
			break
		}
		if name != want[i].hdr.Name || ino != uint64(i+1) {
			t.Fatalf("entry %d: name %q ino %d", i, name, ino)
		}
		wantLink := uint64(1)
		if mode&modeTypeIF == sIFDIR {
			wantLink = 2
		}
		if nlink != wantLink {
			t.Errorf("%s: nlink %d, want %d", name, nlink, wantLink)
		}
	}
	if strings.Trim(string(b[off:]), "\x00") != "" {
		t.Fatal("non-zero bytes after trailer")
	}
}

func TestDeterministic(t *testing.T) {
	if !bytes.Equal(build(t, sample()), build(t, sample())) {
		t.Fatal("two runs differ")
	}
}

// TestGNUCpio uses GNU cpio as the oracle: it must list and extract the
// archive with the names, modes, owners, times, targets and content written.
func TestGNUCpio(t *testing.T) {
	imagecheck.RequireTool(t, "cpio")
	archive := build(t, sample())

	list := exec.Command("cpio", "-it", "--quiet")
	list.Stdin = bytes.NewReader(archive)
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v\n%s", err, out)
	}
	var names []string
	for _, e := range sample() {
		names = append(names, e.hdr.Name)
	}
	if got := strings.TrimSpace(string(out)); got != strings.Join(names, "\n") {
		t.Fatalf("cpio -it listed:\n%s\nwant:\n%s", got, strings.Join(names, "\n"))
	}

	dir := t.TempDir()
	extract := exec.Command("cpio", "-idv", "--quiet", "--preserve-modification-time", "--no-absolute-filenames")
	extract.Dir = dir
	extract.Stdin = bytes.NewReader(archive)
	if out, err := extract.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idv: %v\n%s", err, out)
	}
	root := os.Geteuid() == 0
	for _, e := range sample() {
		p := filepath.Join(dir, e.hdr.Name)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Error(err)
			continue
		}
		if e.hdr.Mode.Type() == fs.ModeDevice|fs.ModeCharDevice && !root {
			continue
		}
		if fi.Mode() != e.hdr.Mode {
			t.Errorf("%s: mode %v, want %v", e.hdr.Name, fi.Mode(), e.hdr.Mode)
		}
		switch e.hdr.Mode.Type() {
		case fs.ModeSymlink:
			if target, err := os.Readlink(p); err != nil || target != e.hdr.Linkname {
				t.Errorf("%s: target %q %v, want %q", e.hdr.Name, target, err, e.hdr.Linkname)
			}
		case 0:
			if data, err := os.ReadFile(p); err != nil || string(data) != e.data {
				t.Errorf("%s: content %q %v, want %q", e.hdr.Name, data, err, e.data)
			}
			if e.hdr.Mtime != 0 && !fi.ModTime().Equal(time.Unix(e.hdr.Mtime, 0)) {
				t.Errorf("%s: mtime %v, want %v", e.hdr.Name, fi.ModTime(), time.Unix(e.hdr.Mtime, 0))
			}
		}
	}

	// Owners and device numbers as GNU cpio reads them.
	verbose := exec.Command("cpio", "-itv", "--quiet", "--numeric-uid-gid")
	verbose.Stdin = bytes.NewReader(archive)
	out, err = verbose.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -itv: %v\n%s", err, out)
	}
	for _, want := range []string{"12       34", "5,   1", "lib/abs -> /bin/busybox"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("cpio -itv output lacks %q:\n%s", want, out)
		}
	}
}

func TestErrors(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteHeader(&Header{Name: "f", Mode: 0o644, Size: 2}); err != nil {
		t.Fatal(err)
	}
	if n, err := w.Write([]byte("abc")); n != 2 || !errors.Is(err, ErrWriteTooLong) {
		t.Fatalf("overlong write: n=%d err=%v", n, err)
	}

	w = NewWriter(&buf)
	if err := w.WriteHeader(&Header{Name: "f", Mode: 0o644, Size: 2}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&Header{Name: "g", Mode: 0o644}); err == nil {
		t.Fatal("short entry accepted by WriteHeader")
	}
	if err := w.Close(); err == nil {
		t.Fatal("short entry accepted by Close")
	}

	for _, h := range []Header{
		{Name: "", Mode: 0o644},
		{Name: "t", Mode: 0o644, Mtime: -1},
		{Name: "t", Mode: 0o644, Mtime: 1 << 32},
		{Name: "t", Mode: 0o644, Size: 1 << 32},
		{Name: "t", Mode: fs.ModeSymlink | 0o777},
		{Name: "t", Mode: fs.ModeDir | 0o755, Size: 1},
		{Name: "t", Mode: fs.ModeIrregular},
	} {
		w := NewWriter(&buf)
		if err := w.WriteHeader(&h); err == nil {
			t.Errorf("header %+v accepted", h)
		}
	}

	w = NewWriter(&buf)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&Header{Name: "late", Mode: 0o644}); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteHeader after Close: %v", err)
	}
}
