package ext4

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	writer "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// A fuzz input describes a sparse image: chunks of a 2-byte block number
// and up to 4096 bytes laid at that block of a fuzzRegion-byte filesystem,
// the rest zeros. The filesystem sits between two pad blocks that stand for
// the neighbouring partitions. Byte 0 of the image (unused by ext4) holds
// flags: unless bit 0 is set, the harness recomputes the superblock,
// descriptor and group 0 inode checksums, so mutations get past them.
const (
	fuzzRegion = 12 << 20
	fuzzOff    = ext4spec.BlockSize
	fuzzPad    = ext4spec.BlockSize
)

// encodeImage turns a real image's non-zero blocks into a fuzz input.
func encodeImage(t testing.TB, img string) []byte {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for blk := 0; blk*ext4spec.BlockSize < len(b) && blk*ext4spec.BlockSize < fuzzRegion; blk++ {
		page := b[blk*ext4spec.BlockSize : (blk+1)*ext4spec.BlockSize]
		if !isZero(page) {
			out = binary.LittleEndian.AppendUint16(out, uint16(blk))
			out = append(out, page...)
		}
	}
	if len(out) > 96<<10 {
		t.Fatalf("seed from %s is %d bytes", img, len(out))
	}
	return out
}

// layImage writes the image an input describes into a memfd.
func layImage(t testing.TB, in []byte) *os.File {
	fd, err := unix.MemfdCreate("fuzz-ext4", 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "fuzz-ext4")
	if err := f.Truncate(fuzzOff + fuzzRegion + fuzzPad); err != nil {
		t.Fatal(err)
	}
	pad := bytes.Repeat([]byte{0xA5}, fuzzPad)
	f.WriteAt(pad, 0)
	f.WriteAt(pad, fuzzOff+fuzzRegion)
	for len(in) >= 2 {
		blk := int64(binary.LittleEndian.Uint16(in)) % (fuzzRegion / ext4spec.BlockSize)
		n := min(len(in)-2, ext4spec.BlockSize)
		f.WriteAt(in[2:2+n], fuzzOff+blk*ext4spec.BlockSize)
		in = in[2+n:]
	}
	var flags [1]byte
	f.ReadAt(flags[:], fuzzOff)
	if flags[0]&1 == 0 {
		fixChecksums(f)
	}
	return f
}

// fixChecksums recomputes the superblock's and up to 64 descriptors'
// checksums, as a writer that meant them would.
func fixChecksums(f *os.File) {
	le := binary.LittleEndian
	sb := make([]byte, 1024)
	f.ReadAt(sb, fuzzOff+1024)
	seed := ext4spec.ChecksumSeed(sb[0x68:0x78])
	if le.Uint32(sb[0x60:])&ext4spec.IncompatCsumSeed != 0 {
		seed = le.Uint32(sb[0x270:])
	}
	ext4spec.SetSuperChecksum(sb)
	f.WriteAt(sb, fuzzOff+1024)
	gdt := make([]byte, 64*ext4spec.DescSize)
	f.ReadAt(gdt, fuzzOff+ext4spec.BlockSize)
	for g := 0; g < 64; g++ {
		d := gdt[g*ext4spec.DescSize : (g+1)*ext4spec.DescSize]
		le.PutUint16(d[0x1E:], ext4spec.DescChecksum(seed, uint32(g), d))
	}
	f.WriteAt(gdt, fuzzOff+ext4spec.BlockSize)
	// Group 0's first 64 inodes, where the seeds keep all of theirs.
	it := int64(descU64(gdt, 0x08, 0x28))
	if it <= 0 || it >= fuzzRegion/ext4spec.BlockSize-4 {
		return
	}
	n := int(min(le.Uint32(sb[0x28:]), 64))
	tbl := make([]byte, n*ext4spec.InodeSize)
	f.ReadAt(tbl, fuzzOff+it*ext4spec.BlockSize)
	for i := 0; i < n; i++ {
		if b := tbl[i*ext4spec.InodeSize : (i+1)*ext4spec.InodeSize]; !isZero(b) {
			ext4spec.SetInodeChecksum(b, seed, uint32(i+1))
		}
	}
	f.WriteAt(tbl, fuzzOff+it*ext4spec.BlockSize)
}

// pages is the file's non-zero 4 KiB pages, found through SEEK_DATA so a
// sparse image costs only what it holds.
func pages(t testing.TB, f *os.File) map[int64]string {
	out := map[int64]string{}
	buf := make([]byte, ext4spec.BlockSize)
	end := int64(fuzzOff + fuzzRegion + fuzzPad)
	for pos := int64(0); pos < end; {
		d, err := unix.Seek(int(f.Fd()), pos, unix.SEEK_DATA)
		if err != nil {
			break
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		for p := d &^ (ext4spec.BlockSize - 1); p < h; p += ext4spec.BlockSize {
			if _, err := f.ReadAt(buf, p); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if !isZero(buf) {
				out[p] = string(buf)
			}
		}
		pos = h
	}
	return out
}

func samePages(a, b map[int64]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// padsIntact checks nothing outside the filesystem's range changed.
func padsIntact(t testing.TB, before, after map[int64]string) {
	for _, p := range []int64{0, fuzzOff + fuzzRegion} {
		if before[p] != after[p] {
			t.Fatalf("the neighbouring partition's block at %d changed", p)
		}
	}
}

// allocated runs fn and returns the bytes it allocated.
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// maxFuzzAlloc: the largest group inode table (8 MiB) plus extents, maps
// and the journal chunk.
const maxFuzzAlloc = 32 << 20

// fuzzSeeds adds small real images: the writer's (with a journal) and
// mkfs.ext4's with and without one, each with an unsorted /etc/shadow.
func fuzzSeeds(f *testing.F) {
	for _, s := range seedInputs(f) {
		f.Add(s)
	}
}

func seedInputs(f testing.TB) [][]byte {
	var seeds [][]byte
	shadow := shadowLines(20)
	dir := f.TempDir()
	wimg := filepath.Join(dir, "writer.img")
	wf, err := os.Create(wimg)
	if err != nil {
		f.Fatal(err)
	}
	if err := wf.Truncate(fuzzRegion); err != nil {
		f.Fatal(err)
	}
	w, err := writer.NewWriter(wf, 0, writer.Options{Size: fuzzRegion, Inodes: 64, Time: testTime, Label: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	if err := w.Mkdir(writer.Header{Name: "etc", Mode: 0o755, Mtime: testTime}); err != nil {
		f.Fatal(err)
	}
	fw, err := w.Create(writer.Header{Name: "etc/shadow", Mode: 0o600, Mtime: testTime, Size: int64(len(shadow))})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := fw.Write(shadow); err != nil {
		f.Fatal(err)
	}
	if err := w.Close(); err != nil {
		f.Fatal(err)
	}
	wf.Close()
	seeds = append(seeds, encodeImage(f, wimg))

	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/shadow"), shadow, 0o600); err != nil {
		f.Fatal(err)
	}
	for _, opts := range [][]string{
		{"-O", "^has_journal,^resize_inode,^flex_bg", "-N", "16"},
		{"-O", "^resize_inode,^flex_bg", "-N", "16", "-J", "size=4,location=40K"},
	} {
		seeds = append(seeds, encodeImage(f, mkfs(f, fuzzRegion, append(opts, "-d", root)...)))
	}
	// A fragmented file with an extent tree block.
	seeds = append(seeds, encodeImage(f, fragImage(f, fuzzRegion, "/etc/shadow", shadowLines(150), "-N", "16", "-O", "^resize_inode")))
	return seeds
}

// The seeds reach the end of both targets: Normalize accepts them, and
// /etc/shadow is found, read and rewritten.
func TestFuzzSeedsAccepted(t *testing.T) {
	for i, s := range seedInputs(t) {
		img := layImage(t, s)
		if _, err := Normalize(img, fuzzOff, fuzzRegion, NormalizeOptions{Time: normTime}); err != nil {
			t.Errorf("seed %d: Normalize: %v", i, err)
		}
		fs, err := Open(img, fuzzOff, fuzzRegion)
		if err != nil {
			t.Fatalf("seed %d: Open: %v", i, err)
		}
		fl, err := fs.Lookup("/etc/shadow")
		if err != nil {
			t.Fatalf("seed %d: Lookup: %v", i, err)
		}
		data, err := fs.ReadFile(fl)
		if err == nil {
			err = fs.Rewrite(fl, bytes.Repeat([]byte{'x'}, len(data)))
		}
		if err != nil || len(data) == 0 {
			t.Errorf("seed %d: read %d bytes, rewrite: %v", i, len(data), err)
		}
		img.Close()
	}
}

// FuzzNormalize: nothing outside the filesystem is written, a refused image
// is unchanged, a second run changes nothing, allocations are bounded.
func FuzzNormalize(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		img := layImage(t, in)
		defer img.Close()
		before := pages(t, img)
		var err error
		if n := allocated(func() { _, err = Normalize(img, fuzzOff, fuzzRegion, NormalizeOptions{Time: normTime}) }); n > maxFuzzAlloc {
			t.Fatalf("Normalize allocated %d bytes", n)
		}
		after := pages(t, img)
		padsIntact(t, before, after)
		if err != nil {
			if !samePages(before, after) {
				t.Fatalf("refused (%v) but changed the image", err)
			}
			return
		}
		rep, err := Normalize(img, fuzzOff, fuzzRegion, NormalizeOptions{Time: normTime})
		if err != nil {
			t.Fatalf("second Normalize refused its own output: %v", err)
		}
		if rep.TimesChanged != 0 || rep.GenerationsZeroed != 0 || rep.VersionsZeroed != 0 || rep.BlocksResealed != 0 ||
			rep.FreeInodesCleared != 0 || rep.JournalCleared || len(rep.SuperblockFields) != 0 {
			t.Fatalf("second Normalize changed something: %+v", rep)
		}
		if !samePages(after, pages(t, img)) {
			t.Fatal("second Normalize changed bytes")
		}
	})
}

// FuzzReadFile: Lookup, ReadFile and Rewrite of /etc/shadow. Reading never
// writes; a rewrite changes only the file's data blocks and reads back.
func FuzzReadFile(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		img := layImage(t, in)
		defer img.Close()
		before := pages(t, img)
		var fl *File
		var fs *FS
		var data []byte
		var err error
		if n := allocated(func() {
			if fs, err = Open(img, fuzzOff, fuzzRegion); err != nil {
				return
			}
			if fl, err = fs.Lookup("/etc/shadow"); err != nil {
				return
			}
			data, err = fs.ReadFile(fl)
		}); n > maxFuzzAlloc {
			t.Fatalf("reading allocated %d bytes", n)
		}
		if err == nil && int64(len(data)) != fl.Size {
			t.Fatalf("ReadFile returned %d bytes of %d", len(data), fl.Size)
		}
		if err == nil {
			repl := bytes.Clone(data)
			for i := range repl {
				repl[i] ^= 0xFF
			}
			if err = fs.Rewrite(fl, repl); err == nil {
				checkRewrite(t, img, fl, before, repl)
				return
			}
		}
		if !samePages(before, pages(t, img)) {
			t.Fatalf("refused (%v) but changed the image", err)
		}
	})
}

// checkRewrite: every changed page lies in the file's data runs, and the
// file reads back as written.
func checkRewrite(t *testing.T, img *os.File, fl *File, before map[int64]string, want []byte) {
	after := pages(t, img)
	padsIntact(t, before, after)
	inFile := func(p int64) bool {
		found := false
		fl.eachRun(func(e extent, from, to int64) error {
			s := fuzzOff + int64(e.Pblk)*ext4spec.BlockSize
			found = found || p >= s && p < s+(to-from)
			return nil
		})
		return found
	}
	for p, v := range after {
		if before[p] != v && !inFile(p) {
			t.Fatalf("Rewrite changed byte page %d outside %s's data", p, fl.Path)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok && !inFile(p) {
			t.Fatalf("Rewrite zeroed page %d outside %s's data", p, fl.Path)
		}
	}
	fs, err := Open(img, fuzzOff, fuzzRegion)
	if err != nil {
		t.Fatalf("Open after Rewrite: %v", err)
	}
	fl2, err := fs.Lookup(fl.Path)
	if err != nil {
		t.Fatalf("Lookup after Rewrite: %v", err)
	}
	if got, err := fs.ReadFile(fl2); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ReadFile after Rewrite: %v", err)
	}
}
