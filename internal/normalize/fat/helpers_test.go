package fat

import (
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// mkfsFAT32 makes a FAT32 with mkfs.vfat in a new sparse file of kib KiB.
func mkfsFAT32(t testing.TB, kib int64, args ...string) string {
	t.Helper()
	imagecheck.RequireTool(t, "mkfs.vfat")
	p := filepath.Join(t.TempDir(), "fat.img")
	args = append(append([]string{"-F", "32", "--invariant", "-i", "2a2a2a2a"}, args...), "-C", p, strconv.FormatInt(kib, 10))
	if out, err := exec.Command("mkfs.vfat", args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.vfat %q: %v\n%s", args, err, out)
	}
	return p
}

// rangeSum is the sha256 of f[off:off+n].
func rangeSum(t testing.TB, p string, off, n int64) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if m, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil || m != n {
		t.Fatalf("reading %d bytes at %d of %s: %d, %v", n, off, p, m, err)
	}
	return [32]byte(h.Sum(nil))
}

// patchFile applies fn to n bytes at off of p.
func patchFile(t testing.TB, p string, off, n int64, fn func(b []byte)) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	fn(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// geometry is what a test needs of a BPB.
type geometry struct{ bps, spc, reserved, fatSecs, dataOff int64 }

func bpb(t testing.TB, p string, off int64) geometry {
	t.Helper()
	var g geometry
	patchFile(t, p, off, 512, func(b []byte) {
		g = geometry{int64(le.Uint16(b[11:])), int64(b[13]), int64(le.Uint16(b[14:])), int64(le.Uint32(b[36:])), 0}
		g.dataOff = (g.reserved + int64(b[16])*g.fatSecs) * g.bps
	})
	return g
}

func (g geometry) clusterOff(c uint32) int64 { return g.dataOff + int64(c-2)*g.bps*g.spc }

// setFAT sets cluster c's entry in both FATs of the filesystem at p[0:].
func (g geometry) setFAT(t testing.TB, p string, c, val uint32) {
	t.Helper()
	for i := range int64(2) {
		patchFile(t, p, (g.reserved+i*g.fatSecs)*g.bps+int64(c)*4, 4, func(b []byte) { le.PutUint32(b, val) })
	}
}

// rootEntry returns the offset of the short entry named name11 (8.3,
// space padded) in the root directory's first cluster, and its cluster.
func (g geometry) rootEntry(t testing.TB, p, name11 string) (int64, uint32) {
	t.Helper()
	var at int64 = -1
	var first uint32
	patchFile(t, p, g.clusterOff(2), g.bps*g.spc, func(b []byte) {
		for i := 0; i+32 <= len(b); i += 32 {
			if string(b[i:i+11]) == name11 {
				at, first = g.clusterOff(2)+int64(i), uint32(le.Uint16(b[i+20:]))<<16|uint32(le.Uint16(b[i+26:]))
				return
			}
		}
	})
	if at < 0 {
		t.Fatalf("no root entry %q", name11)
	}
	return at, first
}

// measure runs fn and returns the bytes it allocated and the bytes the
// process read from files (/proc/self/io's rchar: any read, ours or not,
// so it holds whichever code Normalize is).
func measure(t testing.TB, fn func()) (alloc, read int64) {
	t.Helper()
	var m0, m1 runtime.MemStats // TotalAlloc only grows: no GC needed
	r0 := rchar(t)
	runtime.ReadMemStats(&m0)
	fn()
	runtime.ReadMemStats(&m1)
	return int64(m1.TotalAlloc - m0.TotalAlloc), rchar(t) - r0
}

var rcharLine = regexp.MustCompile(`(?m)^rchar: (\d+)$`)

func rchar(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Fatal(err)
	}
	m := rcharLine.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no rchar in /proc/self/io:\n%s", b)
	}
	n, err := strconv.ParseInt(string(m[1]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
