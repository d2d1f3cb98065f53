package gcetar

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

const testMtime = 1700000000

type chunk struct {
	off  int64
	data []byte
}

// image is a test disk image: size bytes, zero but for chunks.
type image struct {
	name   string
	size   int64
	chunks []chunk
}

// filled returns n bytes, none zero, that vary with seed.
func filled(n int, seed int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x>>24) | 1
	}
	return b
}

// runs returns n data runs of one 512-byte block each, one every stride
// bytes from first.
func runs(n int, first, stride int64) []chunk {
	var cs []chunk
	for i := range n {
		cs = append(cs, chunk{first + int64(i)*stride, filled(blockSize, i)})
	}
	return cs
}

// mixedBlock is a 4 KiB block whose second and third sectors are zero.
func mixedBlock() []byte {
	b := filled(4096, 99)
	clear(b[512:1536])
	return b
}

const mib = 1 << 20

// The map entries (data runs + a final entry when the file ends in a hole)
// are in the names.
var images = []image{
	{"one run ends in hole", 4 * mib, []chunk{{1536, []byte("hello")}}},
	{"ends in data", 4 * mib, []chunk{{4*mib - 4096, filled(4096, 1)}}},
	{"zero sectors inside a block", 4 * mib, []chunk{{8192, mixedBlock()}}},
	{"partial last block data", 4*mib + 100, []chunk{{0, filled(512, 2)}, {4*mib + 50, filled(50, 3)}}},
	{"partial last block zero", 4*mib + 100, []chunk{{0, filled(512, 2)}}},
	{"all hole", 4 * mib, nil},
	{"4 entries no extension", 4 * mib, append(runs(3, 0, 8192), chunk{4*mib - 512, filled(512, 4)})},
	{"5 entries", 4 * mib, runs(4, 4096, 8192)},
	{"25 entries one full extension", 4 * mib, runs(24, 0, 8192)},
	{"26 entries two extensions", 4 * mib, runs(25, 0, 8192)},
	{"70 entries four extensions", 4 * mib, runs(69, 512, 16384)},
}

// unsparse are images GNU tar does not store sparse (it tells sparse files
// by their allocation), which Write does.
var unsparse = []image{
	{"empty", 0, nil},
	{"no holes", 64 << 10, []chunk{{0, filled(64<<10, 8)}}},
}

// past8GiB has offsets and a real size only base-256 can store. It ends in
// a hole: GNU tar's SEEK_DATA detection, used to compare with it, adds the
// final zero-length entry even after data, its raw detection (and Write)
// only after a hole.
var past8GiB = image{"past 8 GiB", 9 << 30, []chunk{
	{4096, filled(4096, 5)},
	{8<<30 + 4096, filled(8192, 6)},
	{9<<30 - 8192, filled(4096, 7)},
}}

func (im image) data() (n int64) {
	for _, c := range im.chunks {
		n += int64(len(c.data))
	}
	return n
}

func (im image) create(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "disk.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(im.size); err != nil {
		t.Fatal(err)
	}
	for _, c := range im.chunks {
		if _, err := f.WriteAt(c.data, c.off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func archive(t testing.TB, src string, size, mtime int64) []byte {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	if err := Write(&out, f, "disk.raw", size, mtime, nil); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func gunzip(t testing.TB, gz []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gnuTar(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("tar")
	if err != nil {
		t.Skipf("GNU tar not found: %v", err)
	}
	out, err := exec.Command(p, "--version").Output()
	if err != nil || !bytes.Contains(out, []byte("GNU tar")) {
		t.Skipf("tar is not GNU tar: %s", out)
	}
	return p
}

func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// TestSameBytesAsGNUTar compares the tar inside the gzip with what GNU tar
// writes for the same file and options. --hole-detection=raw decides holes
// by content as Write does; past 8 GiB (where reading every hole takes GNU
// tar half a minute) the data is whole filesystem blocks, so SEEK_DATA
// finds the same map.
func TestSameBytesAsGNUTar(t *testing.T) {
	tarBin := gnuTar(t)
	for _, im := range slices.Concat(images, []image{past8GiB}) {
		t.Run(im.name, func(t *testing.T) {
			dir := t.TempDir()
			src := im.create(t, dir)
			detection := "--hole-detection=raw"
			if im.size > 1<<30 {
				detection = "--hole-detection=seek"
			}
			theirs := run(t, tarBin, "-C", dir, "--format=oldgnu", "-S", detection, "--numeric-owner",
				"--owner=0", "--group=0", "--mode=0644", fmt.Sprintf("--mtime=@%d", testMtime), "-cf", "-", "disk.raw")
			ours := gunzip(t, archive(t, src, im.size, testMtime))
			if !bytes.Equal(ours, theirs) {
				t.Fatalf("differs from GNU tar's:\n%s", firstDiff(ours, theirs))
			}
		})
	}
}

func firstDiff(a, b []byte) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	from := max(i-16, 0) &^ 15
	return fmt.Sprintf("lengths %d and %d, first difference at %d\nours   % x\ntheirs % x",
		len(a), len(b), i, a[from:min(from+64, len(a))], b[from:min(from+64, len(b))])
}

// TestGNUTarExtracts lists and extracts the archive with GNU tar: one
// member, disk.raw, the source's bytes, sparse.
func TestGNUTarExtracts(t *testing.T) {
	tarBin := gnuTar(t)
	for _, im := range slices.Concat(images, unsparse, []image{past8GiB}) {
		t.Run(im.name, func(t *testing.T) {
			dir := t.TempDir()
			src := im.create(t, dir)
			gz := filepath.Join(dir, "image.tar.gz")
			if err := os.WriteFile(gz, archive(t, src, im.size, testMtime), 0o644); err != nil {
				t.Fatal(err)
			}
			list := strings.Split(strings.TrimSpace(string(run(t, tarBin, "-tvzf", gz))), "\n")
			if len(list) != 1 || !strings.HasPrefix(list[0], "-rw-r--r-- 0/0 ") || !strings.HasSuffix(list[0], fmt.Sprintf(" %d 2023-11-14 22:13 disk.raw", im.size)) {
				t.Fatalf("tar -tv lists %q, want one member, -rw-r--r-- 0/0 %d 2023-11-14 22:13 disk.raw", list, im.size)
			}
			out := filepath.Join(dir, "out")
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			run(t, tarBin, "-C", out, "-xzSf", gz)
			got := filepath.Join(out, "disk.raw")
			sameContent(t, got, src)
			if alloc := stat(t, got).Blocks * 512; im.data()*4 <= im.size && alloc*4 > im.size {
				t.Errorf("extracted file has %d bytes allocated of %d: not sparse", alloc, im.size)
			}
			if fi, _ := os.Stat(got); fi.ModTime().Unix() != testMtime {
				t.Errorf("extracted mtime %v, want %d", fi.ModTime(), testMtime)
			}
		})
	}
}

// TestGoReads reads the archive with Go's archive/tar.
func TestGoReads(t *testing.T) {
	for _, im := range slices.Concat(images, unsparse) {
		t.Run(im.name, func(t *testing.T) {
			src := im.create(t, t.TempDir())
			want, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			raw := gunzip(t, archive(t, src, im.size, testMtime))
			if got := string(raw[offMagic : offMagic+8]); got != "ustar  \x00" {
				t.Errorf("magic %q, want %q", got, "ustar  \x00")
			}
			if raw[offTypeflag] != 'S' {
				t.Errorf("typeflag %q, want 'S'", raw[offTypeflag])
			}
			tr := tar.NewReader(bytes.NewReader(raw))
			hdr, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if hdr.Name != "disk.raw" || hdr.Typeflag != tar.TypeGNUSparse || hdr.Size != im.size || hdr.Mode != 0o644 ||
				hdr.Uid != 0 || hdr.Gid != 0 || hdr.ModTime.Unix() != testMtime || hdr.Format != tar.FormatGNU {
				t.Errorf("header %+v, want disk.raw, sparse, %d bytes, 0644, 0:0, %d, GNU", hdr, im.size, testMtime)
			}
			got, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("content differs from the source's")
			}
			if _, err := tr.Next(); err != io.EOF {
				t.Errorf("after the member: %v, want io.EOF", err)
			}
		})
	}
}

// TestReproducible: the bytes depend on the content and mtime alone.
func TestReproducible(t *testing.T) {
	im := images[len(images)-1]
	dir := t.TempDir()
	src := im.create(t, dir)
	a := archive(t, src, im.size, testMtime)
	if b := archive(t, src, im.size, testMtime); !bytes.Equal(a, b) {
		t.Error("two writes differ")
	}

	// The same content fully allocated: what SEEK_DATA reports must not matter.
	content, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dense := filepath.Join(dir, "dense.raw")
	if err := os.WriteFile(dense, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if alloc := stat(t, dense).Blocks * 512; alloc < im.size {
		t.Fatalf("dense copy has only %d of %d bytes allocated", alloc, im.size)
	}
	if b := archive(t, dense, im.size, testMtime); !bytes.Equal(a, b) {
		t.Error("a non-sparse copy of the same content gives different bytes")
	}

	// Another mtime changes the mtime field and the checksum only.
	c := archive(t, src, im.size, testMtime+1)
	if bytes.Equal(a, c) {
		t.Fatal("another mtime gives the same bytes")
	}
	ra, rc := gunzip(t, a), gunzip(t, c)
	if len(ra) != len(rc) {
		t.Fatalf("another mtime changes the length: %d, %d", len(ra), len(rc))
	}
	for i := range ra {
		if ra[i] != rc[i] && (i < offMtime || i >= offChksum+8) {
			t.Fatalf("another mtime changes byte %d", i)
		}
	}

	// The gzip header: no flags (so no name or comment), time 0, BestSpeed's
	// extra flags, OS "unknown".
	if want := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255}; !bytes.Equal(a[:10], want) {
		t.Errorf("gzip header % x, want % x", a[:10], want)
	}
}

// sameContent compares two files of the same size, reading only where
// either has data.
func sameContent(t testing.TB, a, b string) {
	t.Helper()
	fa, fb := open(t, a), open(t, b)
	defer fa.Close()
	defer fb.Close()
	size := stat(t, a).Size
	if sb := stat(t, b).Size; sb != size {
		t.Fatalf("%s has %d bytes, %s %d", a, size, b, sb)
	}
	ba, bb := make([]byte, mib), make([]byte, mib)
	for off := int64(0); off < size; {
		off = min(nextData(t, fa, off, size), nextData(t, fb, off, size))
		if off >= size {
			break
		}
		n := min(int64(mib), size-off)
		if _, err := fa.ReadAt(ba[:n], off); err != nil {
			t.Fatal(err)
		}
		if _, err := fb.ReadAt(bb[:n], off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			t.Fatalf("%s and %s differ in the MiB at %d", a, b, off)
		}
		off += n
	}
}

func nextData(t testing.TB, f *os.File, off, size int64) int64 {
	d, err := f.Seek(off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return size
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func open(t testing.TB, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func stat(t testing.TB, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}
