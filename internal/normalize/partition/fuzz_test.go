package partition

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
)

// The fuzzed image: fuzzDisk bytes, sparse, holding the input's first
// sectors at offset 0.
const (
	fuzzDisk    = 256 << 10
	fuzzSectors = fuzzDisk / gptspec.SectorSize
	fuzzHead    = 34 * gptspec.SectorSize // MBR, GPT header, 128 entries
)

// fuzzImage lays in out as a disk: in[1:] is sector 0 onwards, at most
// fuzzHead bytes; in[0] bit 1 asks for the primary GPT's CRCs to be set
// right, bit 0 for the backup GPT that sgdisk writes (sectors 2..33
// copied before the last sector, the header there with its LBAs swapped). The committed seeds (testdata/fuzz/FuzzPartition)
// are the first sectors of 256 KiB images that sgdisk -o, sgdisk -h
// (hybrid MBR) and sfdisk (dos label) made, trailing zeros trimmed.
func fuzzImage(in []byte) []byte {
	img := make([]byte, fuzzDisk)
	if len(in) == 0 {
		return img
	}
	copy(img, in[1:min(len(in), 1+fuzzHead)])
	le := binary.LittleEndian
	hdr := img[gptspec.SectorSize : 2*gptspec.SectorSize]
	size := min(max(le.Uint32(hdr[gptspec.GPTHdrSize:]), gptspec.GPTHdrMinSize), gptspec.SectorSize)
	if in[0]&2 != 0 {
		// Valid CRCs, so that mutations reach what lies behind them.
		lba, array := le.Uint64(hdr[gptspec.GPTHdrEntriesLBA:]), uint64(le.Uint32(hdr[gptspec.GPTHdrNumEntries:]))*uint64(le.Uint32(hdr[gptspec.GPTHdrEntrySize:]))
		if lba < fuzzSectors && array <= fuzzDisk-lba*gptspec.SectorSize {
			at := lba * gptspec.SectorSize
			le.PutUint32(hdr[gptspec.GPTHdrEntriesCRC:], crc32.ChecksumIEEE(img[at:at+array]))
		}
		le.PutUint32(hdr[gptspec.GPTHdrCRC:], gptspec.HeaderCRC(hdr, size))
	}
	if in[0]&1 != 0 {
		last := img[(fuzzSectors-1)*gptspec.SectorSize:]
		copy(img[(fuzzSectors-33)*gptspec.SectorSize:], img[2*gptspec.SectorSize:fuzzHead])
		copy(last, hdr)
		le.PutUint64(last[gptspec.GPTHdrMyLBA:], fuzzSectors-1)
		le.PutUint64(last[gptspec.GPTHdrAltLBA:], 1)
		le.PutUint64(last[gptspec.GPTHdrEntriesLBA:], fuzzSectors-33)
		le.PutUint32(last[gptspec.GPTHdrCRC:], gptspec.HeaderCRC(last, size))
	}
	return img
}

// mayChange are the byte ranges a successful Normalize of img may change:
// the backup GPT (as many sectors before the last one as the primary
// header's entry array takes), and with rederive also the MBR signature,
// the primary header and its entry array where the header puts it. An
// oracle apart from the parser's own bookkeeping.
func mayChange(img []byte, rederive bool) [][2]int64 {
	le := binary.LittleEndian
	hdr := img[gptspec.SectorSize:]
	array := uint64(le.Uint32(hdr[gptspec.GPTHdrNumEntries:])) * uint64(le.Uint32(hdr[gptspec.GPTHdrEntrySize:]))
	arraySectors := int64(min(array, maxGPTEntries)+gptspec.SectorSize-1) / gptspec.SectorSize
	r := [][2]int64{{(fuzzSectors - 1 - arraySectors) * gptspec.SectorSize, fuzzDisk}}
	if rederive {
		at := int64(min(le.Uint64(hdr[gptspec.GPTHdrEntriesLBA:]), fuzzSectors)) * gptspec.SectorSize
		r = append(r, [2]int64{440, 444}, [2]int64{gptspec.SectorSize, 2 * gptspec.SectorSize}, [2]int64{at, at + arraySectors*gptspec.SectorSize})
	}
	return r
}

// changedOutside returns the first byte outside allowed where after
// differs from before, or -1.
func changedOutside(before, after []byte, allowed [][2]int64) int64 {
	masked := bytes.Clone(after)
	for _, r := range allowed {
		lo, hi := max(r[0], 0), min(r[1], int64(len(before)))
		if lo < hi {
			copy(masked[lo:hi], before[lo:hi])
		}
	}
	if bytes.Equal(before, masked) {
		return -1
	}
	for i := range before {
		if before[i] != masked[i] {
			return int64(i)
		}
	}
	panic("unreachable")
}

// checkExtents: inside the disk after sector 0, not empty, disjoint.
func checkExtents(t *testing.T, parts []Extent) {
	t.Helper()
	for _, p := range parts {
		if p.Start < gptspec.SectorSize || p.Size <= 0 || p.Start > fuzzDisk-p.Size {
			t.Fatalf("extent %+v is not inside the %d-byte disk", p, fuzzDisk)
		}
	}
	s := slices.Clone(parts)
	slices.SortFunc(s, func(a, b Extent) int { return int(min(max(a.Start-b.Start, -1), 1)) })
	for i := 1; i < len(s); i++ {
		if s[i].Start < s[i-1].Start+s[i-1].Size {
			t.Fatalf("extents %+v and %+v overlap", s[i-1], s[i])
		}
	}
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

func FuzzPartition(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1})
	mbr := make([]byte, 513)
	mbr[511], mbr[512] = 0x55, 0xaa
	copy(mbr[1+gptspec.MBREntriesOffset:], []byte{0x80, 0, 0, 0, 0x83, 0, 0, 0, 8, 0, 0, 0, 0, 1, 0, 0})
	f.Add(mbr)
	dir := fuzzDir(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		img := fuzzImage(in)
		path := filepath.Join(dir, fmt.Sprintf("fuzz-%d.img", os.Getpid()))
		file, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(path)
		defer file.Close()
		if err := file.Truncate(fuzzDisk); err != nil {
			t.Fatal(err)
		}
		// Only the first and last sectors are data: the file stays sparse.
		if _, err := file.WriteAt(img[:fuzzHead], 0); err != nil {
			t.Fatal(err)
		}
		if _, err := file.WriteAt(img[fuzzDisk-fuzzHead:], fuzzDisk-fuzzHead); err != nil {
			t.Fatal(err)
		}
		read := func() []byte {
			b := make([]byte, fuzzDisk)
			if _, err := file.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			return b
		}

		parts, readErr := ReadPartitions(file)
		if readErr == nil {
			checkExtents(t, parts)
		}
		seed := NormalizeOptions{RederiveIDs: true, Seed: []byte("fuzz")}
		for _, o := range []NormalizeOptions{{}, seed} {
			before := read()
			r, err := Normalize(file, o)
			after := read()
			if err != nil {
				if !bytes.Equal(before, after) {
					t.Fatalf("refused (%v), yet changed byte %d", err, changedOutside(before, after, nil))
				}
				if readErr == nil {
					t.Fatalf("ReadPartitions accepted what Normalize refuses: %v", err)
				}
				return
			}
			if readErr != nil {
				t.Fatalf("ReadPartitions refused (%v) what Normalize accepts", readErr)
			}
			if at := changedOutside(before, after, mayChange(before, o.RederiveIDs)); at >= 0 {
				t.Fatalf("Normalize(%+v) changed byte %d, outside the table", o, at)
			}
			if (r.Table == "none" && len(r.Partitions) > 0) || !slices.Equal(r.Partitions, parts) {
				t.Fatalf("report %+v, ReadPartitions %+v", r, parts)
			}
			if len(r.Fields) == 0 && !bytes.Equal(before, after) {
				t.Fatalf("report %+v, yet the image changed", r)
			}
			again, err := Normalize(file, o)
			if err != nil || len(again.Fields) != 0 || !bytes.Equal(after, read()) {
				t.Fatalf("second Normalize(%+v): %+v, %v", o, again, err)
			}
		}
	})
}
