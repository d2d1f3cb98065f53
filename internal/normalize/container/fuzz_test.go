package container

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// fuzzMaxFile bounds the sparse file a fuzz input describes.
const fuzzMaxFile = 8 << 20

// fuzzFile lays in out as a sparse file: a little-endian uint32 size
// (at most fuzzMaxFile), then records of a uint32 offset, a uint16 length
// and that many bytes, each clipped to the file. The committed seeds
// (testdata/fuzz/FuzzContainer) are the non-zero 512-byte runs of small
// images that `qemu-img create -f vpc|vdi|vhdx|vmdk` (also vpc
// subformat=fixed and vmdk subformat=streamOptimized) and `qemu-img
// convert -O vhdx` (which leaves a stale log) made.
func fuzzFile(in []byte) []byte {
	if len(in) < 4 {
		return nil
	}
	img := make([]byte, min(binary.LittleEndian.Uint32(in), fuzzMaxFile))
	for in = in[4:]; len(in) >= 6; {
		off, n := binary.LittleEndian.Uint32(in), int(binary.LittleEndian.Uint16(in[4:]))
		in = in[6:]
		n = min(n, len(in))
		if uint64(off) < uint64(len(img)) {
			copy(img[off:], in[:n])
		}
		in = in[n:]
	}
	return img
}

// span is [off, off+n) clipped to a file of size bytes.
func span(off, n uint64, size int) [2]uint64 {
	lo := min(off, uint64(size))
	return [2]uint64{lo, lo + min(n, uint64(size)-lo)}
}

// mayChange are the bytes of img that Normalize may change for format: an
// oracle apart from the parsers', after each format's layout.
func mayChange(img []byte, format Format) [][2]uint64 {
	size, le := len(img), binary.LittleEndian
	switch format {
	case VPC:
		return [][2]uint64{span(0, vpcFooterSize, size), span(uint64(max(size-vpcFooterSize, 0)), vpcFooterSize, size)}
	case VDI:
		return [][2]uint64{span(vdiUUIDImage, 32, size)}
	case VMDK:
		if size < 512 {
			return nil
		}
		off, n := le.Uint64(img[vmdkDescOffset:]), le.Uint64(img[vmdkDescSize:])
		return [][2]uint64{span(min(off, 1<<50)*512, min(n, 1<<50)*512, size)}
	case VHDX:
		r := [][2]uint64{span(vhdxHeader1, vhdxHeaderLen, size), span(vhdxHeader2, vhdxHeaderLen, size)}
		for _, h := range []int{vhdxHeader1, vhdxHeader2} {
			if h+vhdxHeaderLen <= size {
				r = append(r, span(le.Uint64(img[h+vhdxHdrLogOffset:]), uint64(le.Uint32(img[h+vhdxHdrLogLength:])), size))
			}
		}
		if vhdxRegion1+vhdxRegionLen <= size {
			t := img[vhdxRegion1:]
			for i := uint32(0); i < min(le.Uint32(t[8:]), vhdxMaxTableEntries); i++ {
				if e := t[16+32*i:]; bytes.Equal(e[:16], vhdxMetadataRegion) {
					r = append(r, span(le.Uint64(e[16:]), uint64(le.Uint32(e[24:])), size))
				}
			}
		}
		return r
	}
	return nil
}

// changedOutside returns the first byte outside allowed where after
// differs from before, or -1.
func changedOutside(before, after []byte, allowed [][2]uint64) int {
	masked := bytes.Clone(after)
	for _, r := range allowed {
		copy(masked[r[0]:r[1]], before[r[0]:r[1]])
	}
	if bytes.Equal(before, masked) {
		return -1
	}
	for i := range before {
		if before[i] != masked[i] {
			return i
		}
	}
	panic("unreachable")
}

// fuzzDir is where fuzz inputs become files: tmpfs when there is one, so
// that Normalize's fsync costs nothing and the fuzzer runs fast.
func fuzzDir(f *testing.F) string {
	d, err := os.MkdirTemp("/dev/shm", "fuzz")
	if err != nil {
		return f.TempDir()
	}
	f.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func FuzzContainer(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 4, 0, 0, 0, 0, 0, 0, 8, 0, 'v', 'h', 'd', 'x', 'f', 'i', 'l', 'e'})
	dir := fuzzDir(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		img := fuzzFile(in)
		path := filepath.Join(dir, fmt.Sprintf("fuzz-%d", os.Getpid()))
		if err := os.WriteFile(path, img, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(path)
		file, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		read := func() []byte {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		format, err := Detect(file, int64(len(img)))
		if err != nil {
			t.Fatalf("Detect: %v", err)
		}
		o := Options{Seed: []byte("fuzz"), Time: 1700000000}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		allocated := ms.TotalAlloc
		r, err := Normalize(file, o)
		runtime.ReadMemStats(&ms)
		// Every read is bounded by the file (and vhdxMaxLog, vmdkMaxDesc):
		// the log is held twice, the BAT read once in chunks.
		if a := ms.TotalAlloc - allocated; a > 4*uint64(len(img))+4<<20 {
			t.Fatalf("Normalize allocated %d bytes for a %d-byte file", a, len(img))
		}
		after := read()
		if err != nil {
			if at := changedOutside(img, after, nil); at >= 0 {
				t.Fatalf("refused (%v), yet changed byte %d", err, at)
			}
			return
		}
		if r.Format != format {
			t.Fatalf("Normalize says %s, Detect %s", r.Format, format)
		}
		if at := changedOutside(img, after, mayChange(img, format)); at >= 0 {
			t.Fatalf("%s: changed byte %d, outside the header regions", format, at)
		}
		if len(r.Fields) == 0 && !bytes.Equal(img, after) {
			t.Fatalf("%s: no field reported, yet the file changed", format)
		}
		again, err := Normalize(file, o)
		if err != nil || len(again.Fields) != 0 || !bytes.Equal(after, read()) {
			t.Fatalf("second Normalize: %+v, %v", again, err)
		}
	})
}
