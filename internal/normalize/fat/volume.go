package fat

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// Limits on what Normalize reads and keeps, whatever a BPB claims.
const (
	// maxFATBytes caps the part of a FAT that maps the clusters (4 bytes
	// each): 16M clusters, a 64 GiB ESP at 4 KiB clusters or 512 GiB at
	// 32 KiB. Zero chunks of it are not kept, so memory follows the
	// entries in use.
	maxFATBytes = 64 << 20
	// maxDirBytes caps all directories together (512K entries); changed
	// directory clusters are held until the plan is written.
	maxDirBytes = 16 << 20
	// ioChunk is the most read at a time from a FAT or free clusters; a
	// cluster (at most 4096 × 128 bytes) always fits.
	ioChunk = 1 << 20
)

// volume is the layout of an existing FAT32 filesystem, from its BPB, and
// the one accessor through which every byte of it is read or written.
type volume struct {
	f        *os.File
	off      int64 // where the partition starts in f
	end      int64 // bytes owned from off: the partition's, then the filesystem's once the BPB is parsed
	nread    int64 // bytes read, for tests of the cost
	bps      int64 // bytes per sector
	cs       int64 // bytes per cluster
	nfats    int
	fatStart int64 // sector of the first FAT
	fatSize  int64 // sectors per FAT
	dataOff  int64 // byte offset of cluster 2
	clusters uint32
	root     uint32
	fsInfo   int64 // sector, 0 = none
	backup   int64 // sector, 0 = none
	fat      table
}

const (
	seekData = unix.SEEK_DATA
	seekHole = unix.SEEK_HOLE
)

var errNoData = unix.ENXIO // SEEK_DATA past the last data

// check asserts [off, off+n) lies inside the bytes the volume owns.
func (v *volume) check(off, n int64) error {
	if off < 0 || n < 0 || off > v.end || n > v.end-off {
		return fmt.Errorf("fat: %d bytes at %d lie outside the %d bytes owned", n, off, v.end)
	}
	return nil
}

func (v *volume) readAt(b []byte, off int64) error {
	if err := v.check(off, int64(len(b))); err != nil {
		return err
	}
	n, err := v.f.ReadAt(b, v.off+off)
	v.nread += int64(n)
	if err != nil {
		return fmt.Errorf("fat: read at %d: %w", v.off+off, err)
	}
	return nil
}

func (v *volume) read(off, n int64) ([]byte, error) {
	if err := v.check(off, n); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	return b, v.readAt(b, off)
}

// nextData returns the start of the first data (not a hole) in [off, end),
// or end when there is none. Where the host cannot tell, all is data.
func (v *volume) nextData(off, end int64) int64 {
	p, err := v.f.Seek(v.off+off, seekData)
	switch {
	case err == nil:
		return min(max(p-v.off, off), end)
	case errors.Is(err, errNoData):
		return end
	}
	return off
}

// nextHole returns the end of the data starting at off, at most end.
func (v *volume) nextHole(off, end int64) int64 {
	p, err := v.f.Seek(v.off+off, seekHole)
	if err != nil {
		return end
	}
	return min(max(p-v.off, off), end)
}

// dataRuns calls fn with each run of data in [lo, hi), so that holes are
// never read.
func (v *volume) dataRuns(lo, hi int64, fn func(a, b int64) error) error {
	for a := v.nextData(lo, hi); a < hi; a = v.nextData(a, hi) {
		b := v.nextHole(a, hi)
		if b <= a {
			b = hi
		}
		if err := fn(a, b); err != nil {
			return err
		}
		a = b
	}
	return nil
}

func (v *volume) fatOff(i int) int64 { return (v.fatStart + int64(i)*v.fatSize) * v.bps }

func (v *volume) clusterOff(c uint32) int64 { return v.dataOff + int64(c-2)*v.cs }

// parseBoot checks the BPB describes a FAT32 that lies inside the bytes
// owned, then owns only the filesystem's, and returns the boot sector.
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
	rootEnts, tot16, fat16 := le.Uint16(bs[fatspec.BootRootEntries:]), int64(le.Uint16(bs[fatspec.BootTotalSectors16:])), le.Uint16(bs[fatspec.BootFATSize16:])
	total := int64(le.Uint32(bs[fatspec.BootTotalSectors32:]))
	switch {
	case bps < 512 || bps > 4096 || bps&(bps-1) != 0:
		return nil, notFAT32("%d bytes per sector", bps)
	case spc == 0 || spc&(spc-1) != 0:
		return nil, notFAT32("%d sectors per cluster", spc)
	case reservedSecs == 0 || v.nfats == 0 || v.nfats > 2:
		return nil, notFAT32("%d reserved sectors, %d FATs", reservedSecs, v.nfats)
	case rootEnts != 0 || fat16 != 0:
		// FAT12/16 have a fixed root directory and 16-bit FAT size.
		label := strings.TrimSpace(string(bs[fatspec.BootFSType16 : fatspec.BootFSType16+8]))
		return nil, notFAT32("BPB has a fixed root directory of %d entries and a 16-bit FAT size of %d (type field %q)", rootEnts, fat16, label)
	case le.Uint16(bs[fatspec.BootVersion:]) != 0:
		return nil, notFAT32("FAT32 version %#x, only 0 is defined", le.Uint16(bs[fatspec.BootVersion:]))
	case tot16 != 0 && total != 0 && total != tot16:
		return nil, notFAT32("16-bit and 32-bit sector counts differ (%d, %d)", tot16, total)
	}
	if tot16 != 0 {
		// mkfs.fat puts a count below 65536 there, and Linux reads it.
		total = tot16
	}
	// All products below fit: sectors < 2^32, bytes per sector ≤ 2^12.
	if total*bps > v.end {
		return nil, notFAT32("%d sectors of %d bytes do not fit in the %d bytes of the partition", total, bps, v.end)
	}
	v.end = total * bps
	v.bps, v.cs = bps, bps*spc
	v.fatStart = reservedSecs
	v.fatSize = int64(le.Uint32(bs[fatspec.BootFATSize32:]))
	dataSec := reservedSecs + int64(v.nfats)*v.fatSize
	if v.fatSize == 0 || total <= dataSec {
		return nil, notFAT32("%d sectors cannot hold %d FATs of %d sectors", total, v.nfats, v.fatSize)
	}
	v.dataOff = dataSec * bps
	clusters := (total - dataSec) / spc
	switch {
	case clusters < 1:
		return nil, notFAT32("no data clusters")
	case clusters > fatspec.MaxClusters:
		return nil, notFAT32("%d clusters, FAT32 allows %d", clusters, fatspec.MaxClusters)
	case (clusters+2)*4 > v.fatSize*bps:
		// Linux refuses this too; a FAT larger than needed is allowed
		// (the specification's formula rounds up), its tail unused.
		return nil, notFAT32("a FAT of %d sectors cannot map %d clusters", v.fatSize, clusters)
	case (clusters+2)*4 > maxFATBytes:
		return nil, notFAT32("%d clusters need a FAT of %d bytes, more than the %d this normaliser reads", clusters, (clusters+2)*4, maxFATBytes)
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
	switch {
	case v.backup != 0 && v.backup == v.fsInfo:
		return nil, notFAT32("backup boot sector and FSInfo both at sector %d", v.backup)
	case v.backup != 0 && v.backup+v.fsInfo >= reservedSecs:
		return nil, notFAT32("backup FSInfo at sector %d outside the reserved sectors", v.backup+v.fsInfo)
	}
	if bps == fatspec.SectorSize {
		return bs, nil
	}
	return v.read(0, bps)
}
