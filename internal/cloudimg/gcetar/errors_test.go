package gcetar

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one saying %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
}

func TestBadArguments(t *testing.T) {
	src := open(t, images[0].create(t, t.TempDir()))
	defer src.Close()
	for _, tc := range []struct {
		name        string
		size, mtime int64
		want        string
	}{
		{"", mib, 0, `member name ""`},
		{"/disk.raw", mib, 0, "relative path"},
		{"../disk.raw", mib, 0, "relative path"},
		{"a/../../disk.raw", mib, 0, "relative path"},
		{"a\x00b", mib, 0, "no NUL"},
		{strings.Repeat("d", 100), mib, 0, "1 to 99 bytes"},
		{"disk.raw", -1, 0, "size -1 is negative"},
		{"disk.raw", mib, -1, "mtime -1 is before 1970"},
		{"disk.raw", 4*mib + 1, 0, "size 4194305 is larger than " + src.Name() + " (4194304 bytes)"},
	} {
		wantErr(t, Write(io.Discard, src, tc.name, tc.size, tc.mtime, nil), tc.want)
	}
	if err := Write(io.Discard, src, strings.Repeat("d", 99), 4*mib, 0, nil); err != nil {
		t.Errorf("99-byte name: %v", err)
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	p := images[0].create(t, dir)
	wo, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer wo.Close()
	err = Write(io.Discard, wo, "disk.raw", 4*mib, 0, nil)
	wantErr(t, err, "reading "+p+" at offset 0")
	if !errors.Is(err, syscall.EBADF) {
		t.Errorf("%v is not EBADF", err)
	}

	// A directory cannot answer SEEK_DATA either: the read that follows fails.
	d := open(t, dir)
	defer d.Close()
	fi, err := d.Stat()
	if err != nil {
		t.Fatal(err)
	}
	err = Write(io.Discard, d, "disk.raw", fi.Size(), 0, nil)
	if !errors.Is(err, syscall.EISDIR) {
		t.Errorf("archiving a directory: %v, want EISDIR", err)
	}

	// Reading without SEEK_DATA past the end of a file that shrank.
	f := open(t, p)
	defer f.Close()
	sc := newScanner(f, 4*mib+blockSize)
	sc.noSeek = true
	err = sc.scan(func(entry) error { return nil }, nil, nil)
	wantErr(t, err, p+" ended at 4194304 bytes, before the 4194816 to archive")
}

type failingWriter struct{ left int }

var errDisk = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		return 0, errDisk
	}
	w.left -= len(p)
	return len(p), nil
}

func TestWriteError(t *testing.T) {
	src := open(t, images[len(images)-1].create(t, t.TempDir()))
	defer src.Close()
	for _, left := range []int{0, 10, 1000} {
		err := Write(&failingWriter{left}, src, "disk.raw", 4*mib, 0, nil)
		if !errors.Is(err, errDisk) || !strings.Contains(err.Error(), "writing the archive") {
			t.Errorf("writer failing after %d bytes: %v", left, err)
		}
	}
}

// sparseEveryMiB is an image of n MiB with one data block at the start of
// each MiB.
func sparseEveryMiB(n int64) image {
	return image{"every MiB", n * mib, runs(int(n), 0, mib)}
}

func TestProgress(t *testing.T) {
	im := sparseEveryMiB(200)
	src := open(t, im.create(t, t.TempDir()))
	defer src.Close()
	var calls []int64
	if err := Write(io.Discard, src, "disk.raw", im.size, 0, func(n int64) { calls = append(calls, n) }); err != nil {
		t.Fatal(err)
	}
	if len(calls) < 2 || len(calls) > 4 || calls[len(calls)-1] != im.size {
		t.Fatalf("progress %v: want 2 to 4 calls, the last with %d", calls, im.size)
	}
	for i, n := range calls[:len(calls)-1] {
		prev := int64(0)
		if i > 0 {
			prev = calls[i-1]
		}
		if n-prev < progressStep {
			t.Errorf("progress %v: call %d only %d bytes after the one before", calls, i, n-prev)
		}
	}
}

// TestChangedWhileWriting writes into the image while its data is being
// archived: the map the data pass finds is not the one in the header.
func TestChangedWhileWriting(t *testing.T) {
	im := sparseEveryMiB(200)
	p := im.create(t, t.TempDir())
	src := open(t, p)
	defer src.Close()
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	err = Write(io.Discard, src, "disk.raw", im.size, 0, func(n int64) {
		if n < im.size {
			if _, err := w.WriteAt([]byte("late"), 150*mib+4096); err != nil {
				t.Error(err)
			}
		}
	})
	wantErr(t, err, p+" changed while it was being archived")
}

// TestMemoryBounded: no memory per map entry. An image with 64 Ki entries
// (512 bytes of data, 512 of zeros, ...) allocates what one with 3 does.
func TestMemoryBounded(t *testing.T) {
	dir := t.TempDir()
	few := image{"few", 64 * mib, []chunk{{mib, filled(32*mib, 1)}}}
	many := image{"many", 64 * mib, nil}
	content := filled(64*mib, 2)
	for off := blockSize; off < len(content); off += 2 * blockSize {
		clear(content[off : off+blockSize])
	}
	many.chunks = []chunk{{0, content}}
	alloc := func(im image) uint64 {
		d := filepath.Join(dir, im.name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		src := open(t, im.create(t, d))
		defer src.Close()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if err := Write(io.Discard, src, "disk.raw", im.size, 0, nil); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	a, b := alloc(few), alloc(many)
	t.Logf("allocated %d bytes for 3 entries, %d for 65536", a, b)
	if b > a+64<<10 {
		t.Errorf("64 Ki entries allocate %d bytes, 3 entries %d: memory grows with the map", b, a)
	}
}

// TestScanWithoutSeek: reading everything finds the map SEEK_DATA helps
// find, and the same data.
func TestScanWithoutSeek(t *testing.T) {
	for _, im := range images {
		src := open(t, im.create(t, t.TempDir()))
		scan := func(noSeek bool) ([]entry, []byte) {
			sc := newScanner(src, im.size)
			sc.noSeek = noSeek
			var es []entry
			var data bytes.Buffer
			err := sc.scan(func(e entry) error { es = append(es, e); return nil },
				func(b []byte) error { data.Write(b); return nil }, nil)
			if err != nil {
				t.Fatal(err)
			}
			return es, data.Bytes()
		}
		e1, d1 := scan(false)
		e2, d2 := scan(true)
		if !equalEntries(e1, e2) || !bytes.Equal(d1, d2) {
			t.Errorf("%s: with SEEK_DATA %v, without %v", im.name, e1, e2)
		}
		src.Close()
	}
}

func equalEntries(a, b []entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
