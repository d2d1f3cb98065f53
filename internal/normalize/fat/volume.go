package fat

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// chunk is how much of a second FAT is read at a time to compare it with
// the first.
const chunk = 1 << 20

// volume is the layout of an existing FAT32 filesystem, from its BPB.
type volume struct {
	f        *os.File
	off      int64
	bps      int64 // bytes per sector
	cs       int64 // bytes per cluster
	nfats    int
	fatStart int64 // sector of the first FAT
	fatSize  int64 // sectors per FAT
	dataOff  int64 // byte offset of cluster 2
	clusters uint32
	root     uint32
	fsInfo   int64    // sector, 0 = none
	backup   int64    // sector, 0 = none
	fat      []byte   // the first FAT, entries 0 .. clusters+1
	heads    [][]byte // entries 0 and 1 of each FAT
}

func (v *volume) read(off, n int64) ([]byte, error) {
	b := make([]byte, n)
	if _, err := v.f.ReadAt(b, v.off+off); err != nil {
		return nil, fmt.Errorf("fat: read at %d: %w", v.off+off, err)
	}
	return b, nil
}

func (v *volume) fatOff(i int) int64 { return (v.fatStart + int64(i)*v.fatSize) * v.bps }

func (v *volume) clusterOff(c uint32) int64 { return v.dataOff + int64(c-2)*v.cs }

// parseBoot checks the BPB describes FAT32 and returns the boot sector.
func (v *volume) parseBoot() ([]byte, error) {
	bs, err := v.read(0, fatspec.SectorSize)
	if err != nil {
		return nil, err
	}
	notFAT32 := func(format string, a ...any) error {
		return fmt.Errorf("%w at offset %d: "+format, append([]any{ErrNotFAT32, v.off}, a...)...)
	}
	if !fatspec.HasBootSignature(bs) {
		return nil, notFAT32("no boot sector signature")
	}
	bps := int64(le.Uint16(bs[fatspec.BootBytesPerSector:]))
	spc := int64(bs[fatspec.BootSectorsPerCluster])
	reservedSecs := int64(le.Uint16(bs[fatspec.BootReservedSectors:]))
	v.nfats = int(bs[fatspec.BootNumFATs])
	rootEnts, tot16, fat16 := le.Uint16(bs[fatspec.BootRootEntries:]), le.Uint16(bs[fatspec.BootTotalSectors16:]), le.Uint16(bs[fatspec.BootFATSize16:])
	switch {
	case bps < 512 || bps > 4096 || bps&(bps-1) != 0:
		return nil, notFAT32("%d bytes per sector", bps)
	case spc == 0 || spc&(spc-1) != 0:
		return nil, notFAT32("%d sectors per cluster", spc)
	case reservedSecs == 0 || v.nfats == 0:
		return nil, notFAT32("%d reserved sectors, %d FATs", reservedSecs, v.nfats)
	case rootEnts != 0 || fat16 != 0 || tot16 != 0:
		// FAT12/16 have a fixed root directory and 16-bit FAT size.
		label := strings.TrimSpace(string(bs[fatspec.BootFSType16 : fatspec.BootFSType16+8]))
		return nil, notFAT32("BPB has a fixed root directory of %d entries and a 16-bit FAT size of %d (type field %q)", rootEnts, fat16, label)
	case le.Uint16(bs[fatspec.BootVersion:]) != 0:
		return nil, notFAT32("FAT32 version %#x, only 0 is defined", le.Uint16(bs[fatspec.BootVersion:]))
	}
	v.bps, v.cs = bps, bps*spc
	v.fatStart = reservedSecs
	v.fatSize = int64(le.Uint32(bs[fatspec.BootFATSize32:]))
	total := int64(le.Uint32(bs[fatspec.BootTotalSectors32:]))
	dataSec := reservedSecs + int64(v.nfats)*v.fatSize
	if v.fatSize == 0 || total <= dataSec {
		return nil, notFAT32("%d sectors cannot hold %d FATs of %d sectors", total, v.nfats, v.fatSize)
	}
	v.dataOff = dataSec * bps
	clusters := (total - dataSec) / spc
	// Entries beyond what the FAT can map are unusable.
	clusters = min(clusters, v.fatSize*bps/4-2, fatspec.MaxClusters)
	if clusters < 1 {
		return nil, notFAT32("no data clusters")
	}
	v.clusters = uint32(clusters)
	v.root = le.Uint32(bs[fatspec.BootRootCluster:])
	if v.root < 2 || v.root > v.clusters+1 {
		return nil, notFAT32("root cluster %d out of range", v.root)
	}
	sector := func(field int) (int64, error) {
		s := int64(le.Uint16(bs[field:]))
		if s == 0 || s == 0xFFFF {
			return 0, nil
		}
		if s >= reservedSecs {
			return 0, notFAT32("sector %d (BPB offset %d) outside the %d reserved sectors", s, field, reservedSecs)
		}
		return s, nil
	}
	if v.fsInfo, err = sector(fatspec.BootFSInfoSector); err != nil {
		return nil, err
	}
	if v.backup, err = sector(fatspec.BootBackupSector); err != nil {
		return nil, err
	}
	if v.backup != 0 && v.backup+v.fsInfo >= reservedSecs {
		return nil, notFAT32("backup FSInfo at sector %d outside the reserved sectors", v.backup+v.fsInfo)
	}
	if bps == fatspec.SectorSize {
		return bs, nil
	}
	return v.read(0, bps)
}

// readFATs loads the first FAT and checks every other copy matches it.
// Entries 0 and 1 hold no allocation (and Windows keeps flags in 1).
func (v *volume) readFATs() error {
	n := (int64(v.clusters) + 2) * 4
	var err error
	if v.fat, err = v.read(v.fatOff(0), n); err != nil {
		return err
	}
	v.heads = [][]byte{v.fat[:8]}
	for i := 1; i < v.nfats; i++ {
		h, err := v.read(v.fatOff(i), 8)
		if err != nil {
			return err
		}
		v.heads = append(v.heads, h)
		for base := int64(8); base < n; base += chunk {
			b, err := v.read(v.fatOff(i)+base, min(chunk, n-base))
			if err != nil {
				return err
			}
			want := v.fat[base : base+int64(len(b))]
			if j := mismatch(b, want); j >= 0 {
				c := (base + int64(j)) / 4
				return fmt.Errorf("fat: FAT 1 and FAT %d differ at cluster %d (%#08x, %#08x); repair with fsck.vfat first",
					i+1, c, le.Uint32(v.fat[c*4:]), le.Uint32(b[c*4-base:]))
			}
		}
	}
	return nil
}

// mismatch returns the index of the first byte where a and b differ, or -1.
func mismatch(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func (v *volume) next(c uint32) uint32 { return le.Uint32(v.fat[c*4:]) & fatspec.EntryMask }

// freeHints returns FSInfo's free count and next-free hint as the Writer
// computes them: all free clusters, and the first one (0xFFFFFFFF for none).
func (v *volume) freeHints() (free, first uint32) {
	first = fatspec.FSInfoUnknown
	for c := uint32(2); c < v.clusters+2; c++ {
		if v.next(c) == 0 {
			if free == 0 {
				first = c
			}
			free++
		}
	}
	return free, first
}

// dirtyFree lists the free clusters whose bytes are not all zero: what
// deleted files left behind (systemd-boot's random seed, replaced kernels).
func (v *volume) dirtyFree() ([]uint32, error) {
	var out []uint32
	buf := make([]byte, v.cs)
	for c := uint32(2); c < v.clusters+2; c++ {
		if v.next(c) != 0 {
			continue
		}
		if _, err := v.f.ReadAt(buf, v.off+v.clusterOff(c)); err != nil {
			return nil, fmt.Errorf("fat: reading free cluster %d: %w", c, err)
		}
		for _, b := range buf {
			if b != 0 {
				out = append(out, c)
				break
			}
		}
	}
	return out, nil
}

// chain returns a directory's clusters, marking them in seen so that a
// cross-linked or looping chain is an error rather than endless work.
func (v *volume) chain(first uint32, seen []uint64, path string) ([]uint32, error) {
	limit := int((fatspec.MaxDirSize + v.cs - 1) / v.cs)
	var cs []uint32
	for c := first; ; {
		if c < 2 || c > v.clusters+1 {
			return nil, fmt.Errorf("fat: directory %s: cluster %d out of range", path, c)
		}
		if seen[c/64]&(1<<(c%64)) != 0 {
			return nil, fmt.Errorf("fat: directory %s: cluster %d already in use (cross-linked or looping chain)", path, c)
		}
		seen[c/64] |= 1 << (c % 64)
		if cs = append(cs, c); len(cs) > limit {
			return nil, fmt.Errorf("fat: directory %s longer than FAT's 65536 entries", path)
		}
		switch n := v.next(c); {
		case n >= fatspec.EndOfChainMin:
			return cs, nil
		case n == 0 || n == fatspec.BadCluster:
			return nil, fmt.Errorf("fat: directory %s: chain runs into free or bad cluster after %d", path, c)
		default:
			c = n
		}
	}
}
