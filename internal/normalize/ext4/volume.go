package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// Limits on what a foreign filesystem may claim. Everything else is bounded
// by the filesystem's size, itself bounded by the structure that owns it.
const (
	// minBlocksPerGroup is mke2fs' lower bound for -g (it also wants a
	// multiple of 8); below it the group count, and the descriptor table
	// read for it, would grow without need.
	minBlocksPerGroup = 256
	// maxGroups caps the descriptor table at 16 MiB (and the list of
	// metadata ranges built from it at 16 MiB while sorted): 32 TiB with
	// the default 32768 blocks per group.
	maxGroups = 1 << 18
	// minBlocks: the superblock, one descriptor block, two bitmaps and an
	// inode table need at least this much; fewer is not a filesystem.
	minBlocks = 16
)

// volume is one ext4 filesystem that load validated, inside the byte range
// [off, off+size) of f that the caller says it owns (its partition, or the
// whole file). Every read and write goes through readAt and writeAt, which
// refuse anything outside the filesystem's blocks.
type volume struct {
	f       *os.File
	off     int64
	size    int64 // bytes owned: the filesystem must fit
	fsBytes int64 // blocks * BlockSize <= size
	sb      []byte
	fsSeed  uint32
	blocks  uint64
	groups  uint32
	ipg     uint32
	bpg     uint32
	gdt     []byte
	gdtBlks uint32
	meta    []blockRange // the filesystem's own blocks, sorted and merged
	dry     bool         // verify only: writeAt checks the range and writes nothing
}

// span checks that [pos, pos+n) lies inside the filesystem.
func (v *volume) span(pos, n int64) error {
	if pos < 0 || n < 0 || pos > v.fsBytes || n > v.fsBytes-pos {
		return fmt.Errorf("ext4: bytes [%d, +%d) lie outside the filesystem's %d bytes", pos, n, v.fsBytes)
	}
	return nil
}

func (v *volume) readAt(b []byte, pos int64) error {
	if err := v.span(pos, int64(len(b))); err != nil {
		return err
	}
	if _, err := v.f.ReadAt(b, v.off+pos); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("ext4: %s ends before byte %d of the filesystem", v.f.Name(), pos+int64(len(b)))
		}
		return fmt.Errorf("ext4: read: %w", err)
	}
	return nil
}

// writeAt is the only way bytes reach the file (zeroRange checks its range
// with span too). A write outside the filesystem is a bug in the plan: it
// is refused, never done, in the dry pass as in the real one.
func (v *volume) writeAt(b []byte, pos int64) error {
	if err := v.span(pos, int64(len(b))); err != nil {
		return fmt.Errorf("ext4: refusing write: %w", err)
	}
	if v.dry {
		return nil
	}
	if _, err := v.f.WriteAt(b, v.off+pos); err != nil {
		return fmt.Errorf("ext4: write: %w", err)
	}
	return nil
}

// readBlock reads block blk into b (BlockSize bytes).
func (v *volume) readBlock(b []byte, blk uint64) error {
	if blk >= v.blocks {
		return fmt.Errorf("ext4: block %d beyond the filesystem's %d", blk, v.blocks)
	}
	return v.readAt(b[:ext4spec.BlockSize], int64(blk)*ext4spec.BlockSize)
}

// runOK reports whether cnt blocks from blk lie inside the filesystem.
func (v *volume) runOK(blk, cnt uint64) bool {
	return blk < v.blocks && cnt <= v.blocks-blk
}

// loadVolume reads and validates the superblock and group descriptors of
// the filesystem at f[off:], which owns size bytes there.
func loadVolume(f *os.File, off, size int64) (*volume, error) {
	if off < 0 || size < 0 || size > math.MaxInt64-off {
		return nil, fmt.Errorf("ext4: bad range %d+%d", off, size)
	}
	v := &volume{f: f, off: off, size: size, fsBytes: min(size, 2048)}
	le := binary.LittleEndian
	sb := make([]byte, 1024)
	if err := v.readAt(sb, 1024); err != nil {
		return nil, err
	}
	if le.Uint16(sb[0x38:]) != ext4spec.SuperMagic {
		return nil, fmt.Errorf("ext4: %s at offset %d is not an ext2/3/4 filesystem (no superblock magic)", f.Name(), off)
	}
	if err := checkSuper(sb); err != nil {
		return nil, err
	}
	v.sb = sb
	v.fsSeed = ext4spec.ChecksumSeed(sb[0x68:0x78])
	if le.Uint32(sb[0x60:])&ext4spec.IncompatCsumSeed != 0 {
		v.fsSeed = le.Uint32(sb[0x270:])
	}
	v.blocks = uint64(le.Uint32(sb[0x04:])) | uint64(le.Uint32(sb[0x150:]))<<32
	v.bpg = le.Uint32(sb[0x20:])
	v.ipg = le.Uint32(sb[0x28:])
	// The filesystem must fit the structure that owns it (issue 11 finding
	// 1): checked by division, so no product can overflow.
	if v.blocks > uint64(size)/ext4spec.BlockSize || v.blocks < minBlocks {
		return nil, fmt.Errorf("ext4: the filesystem claims %d blocks of 4 KiB; its partition holds %d bytes", v.blocks, size)
	}
	v.fsBytes = int64(v.blocks) * ext4spec.BlockSize
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size()-off < v.fsBytes {
		return nil, fmt.Errorf("ext4: %s is %d bytes, the filesystem needs %d from offset %d", f.Name(), st.Size(), v.fsBytes, off)
	}
	// Geometry as mke2fs and the kernel allow it (issue 11 finding 2).
	if v.bpg < minBlocksPerGroup || v.bpg > ext4spec.BlockSize*8 || v.bpg%8 != 0 ||
		v.ipg < ext4spec.InodesPerBlock || v.ipg > ext4spec.BlockSize*8 || v.ipg%ext4spec.InodesPerBlock != 0 {
		return nil, fmt.Errorf("ext4: implausible geometry (%d blocks, %d inodes per group)", v.bpg, v.ipg)
	}
	groups := (v.blocks + uint64(v.bpg) - 1) / uint64(v.bpg)
	if groups > maxGroups {
		return nil, fmt.Errorf("ext4: %d groups (at most %d)", groups, maxGroups)
	}
	v.groups = uint32(groups)
	if groups*uint64(v.ipg) != uint64(le.Uint32(sb[0x00:])) {
		return nil, fmt.Errorf("ext4: inode count %d is not %d groups x %d", le.Uint32(sb[0x00:]), groups, v.ipg)
	}
	if groups*uint64(v.ipg/ext4spec.InodesPerBlock) > v.blocks {
		return nil, fmt.Errorf("ext4: inode tables of %d groups x %d inodes exceed the filesystem", groups, v.ipg)
	}
	v.gdtBlks = uint32((groups*ext4spec.DescSize + ext4spec.BlockSize - 1) / ext4spec.BlockSize)
	if uint64(v.gdtBlks)+1 >= v.blocks {
		return nil, errors.New("ext4: the group descriptors fill the filesystem")
	}
	v.gdt = make([]byte, int(v.gdtBlks)*ext4spec.BlockSize)
	if err := v.readAt(v.gdt, ext4spec.BlockSize); err != nil {
		return nil, err
	}
	// Superblock, descriptors and the blocks reserved for their growth, in
	// group 0 and in each backup group.
	head := 1 + uint64(v.gdtBlks) + uint64(le.Uint16(sb[0xCE:]))
	for grp := uint32(0); grp < v.groups; grp++ {
		if err := v.checkDesc(grp); err != nil {
			return nil, err
		}
		d := v.desc(grp)
		v.meta = append(v.meta, blockRange{descU64(d, 0x00, 0x20), 1}, blockRange{descU64(d, 0x04, 0x24), 1},
			blockRange{descU64(d, 0x08, 0x28), uint64(v.ipg / ext4spec.InodesPerBlock)})
		if ext4spec.HasSuperBackup(grp) {
			// The backups Normalize rewrites must lie inside.
			if !v.runOK(uint64(grp)*uint64(v.bpg), head) {
				return nil, fmt.Errorf("ext4: group %d's superblock and descriptors lie beyond the filesystem", grp)
			}
			v.meta = append(v.meta, blockRange{uint64(grp) * uint64(v.bpg), head})
		}
	}
	v.meta = mergeRanges(v.meta)
	return v, nil
}

// blockRange is Len blocks from Start.
type blockRange struct{ Start, Len uint64 }

// mergeRanges sorts rs and merges overlapping or adjacent ranges.
func mergeRanges(rs []blockRange) []blockRange {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r.Start <= out[n-1].Start+out[n-1].Len {
			out[n-1].Len = max(out[n-1].Len, r.Start+r.Len-out[n-1].Start)
			continue
		}
		out = append(out, r)
	}
	return out
}

// isMeta reports whether any of cnt blocks from blk is the filesystem's own
// (superblocks, descriptors, bitmaps, inode tables, the journal): a file's
// tree, directory or data block there is refused, so no edit of one can
// change another.
func (v *volume) isMeta(blk, cnt uint64) bool {
	i := sort.Search(len(v.meta), func(i int) bool { return v.meta[i].Start+v.meta[i].Len > blk })
	return i < len(v.meta) && v.meta[i].Start < blk+cnt
}

// checkDesc verifies group grp's descriptor: its checksum, and that what
// it points at lies inside the filesystem and its counts inside the group.
func (v *volume) checkDesc(grp uint32) error {
	d := v.desc(grp)
	if got := ext4spec.DescChecksum(v.fsSeed, grp, d); got != binary.LittleEndian.Uint16(d[0x1E:]) {
		return fmt.Errorf("ext4: group %d descriptor checksum mismatch", grp)
	}
	bb, ib, it := descU64(d, 0x00, 0x20), descU64(d, 0x04, 0x24), descU64(d, 0x08, 0x28)
	if !v.runOK(bb, 1) || !v.runOK(ib, 1) || !v.runOK(it, uint64(v.ipg/ext4spec.InodesPerBlock)) {
		return fmt.Errorf("ext4: group %d: bitmaps or inode table (%d, %d, %d) beyond the filesystem", grp, bb, ib, it)
	}
	if descU32(d, 0x0C, 0x2C) > v.bpg || descU32(d, 0x0E, 0x2E) > v.ipg || descU32(d, 0x1C, 0x32) > v.ipg {
		return fmt.Errorf("ext4: group %d: free or unused counts beyond the group", grp)
	}
	return nil
}

// checkSuper refuses a superblock of another layout than the writer's, a
// damaged one and a filesystem still in use.
func checkSuper(sb []byte) error {
	le := binary.LittleEndian
	compat, incompat, ro := le.Uint32(sb[0x5C:]), le.Uint32(sb[0x60:]), le.Uint32(sb[0x64:])
	var missing []string
	for _, req := range []struct {
		ok   bool
		name string
	}{
		{le.Uint32(sb[0x18:]) == 2, "4 KiB blocks"},
		{le.Uint16(sb[0x58:]) == ext4spec.InodeSize, "256-byte inodes"},
		{incompat&ext4spec.IncompatExtents != 0, "extents"},
		{incompat&ext4spec.Incompat64bit != 0 && le.Uint16(sb[0xFE:]) == ext4spec.DescSize, "64bit with 64-byte group descriptors"},
		{ro&ext4spec.RoCompatMetaCsum != 0 && sb[0x175] == 1, "metadata_csum (crc32c)"},
		{ro&ext4spec.RoCompatSparse != 0 && compat&ext4spec.CompatSparseSuper2 == 0, "sparse_super"},
		{le.Uint32(sb[0x14:]) == 0, "first data block 0"},
		{le.Uint32(sb[0x4C:]) == 1, "dynamic revision"},
	} {
		if !req.ok {
			missing = append(missing, req.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("ext4: not an ext4 filesystem of this writer's layout: lacks %v", missing)
	}
	if got := ext4spec.SuperChecksum(sb); got != le.Uint32(sb[0x3FC:]) {
		return fmt.Errorf("ext4: superblock checksum mismatch (%#x, computed %#x)", le.Uint32(sb[0x3FC:]), got)
	}
	// Any other incompat feature means a layout this package was not written for.
	known := uint32(ext4spec.IncompatFiletype | ext4spec.IncompatRecover | ext4spec.IncompatExtents |
		ext4spec.Incompat64bit | ext4spec.IncompatFlexBg | ext4spec.IncompatCsumSeed | ext4spec.IncompatLargeDir)
	if x := incompat &^ known; x != 0 {
		return fmt.Errorf("ext4: unsupported incompatible features %#x", x)
	}
	if ro&ext4spec.RoCompatBigalloc != 0 {
		return errors.New("ext4: bigalloc is not supported")
	}
	// Refusals for a filesystem still in use or damaged: normalising would
	// bake a half-written state into the image.
	state := le.Uint16(sb[0x3A:])
	switch {
	case incompat&ext4spec.IncompatRecover != 0:
		return errors.New("ext4: filesystem was not cleanly unmounted (needs_recovery set: journal must be replayed first)")
	case state&ext4spec.StateValid == 0:
		return errors.New("ext4: filesystem was not cleanly unmounted (state not clean)")
	case state&ext4spec.StateErrors != 0:
		return errors.New("ext4: filesystem has errors (state: with errors); run e2fsck first")
	case le.Uint32(sb[0xE8:]) != 0:
		return fmt.Errorf("ext4: orphan list is not empty (s_last_orphan %d)", le.Uint32(sb[0xE8:]))
	}
	return nil
}

func (v *volume) desc(grp uint32) []byte {
	return v.gdt[int(grp)*ext4spec.DescSize : int(grp+1)*ext4spec.DescSize]
}

func descU64(d []byte, lo, hi int) uint64 {
	return uint64(binary.LittleEndian.Uint32(d[lo:])) | uint64(binary.LittleEndian.Uint32(d[hi:]))<<32
}

func descU32(d []byte, lo, hi int) uint32 {
	return uint32(binary.LittleEndian.Uint16(d[lo:])) | uint32(binary.LittleEndian.Uint16(d[hi:]))<<16
}

// readInode reads inode ino straight from its table.
func (v *volume) readInode(ino uint32, b []byte) error {
	if ino == 0 || uint64(ino) > uint64(v.groups)*uint64(v.ipg) {
		return fmt.Errorf("ext4: inode %d does not exist", ino)
	}
	grp, idx := (ino-1)/v.ipg, (ino-1)%v.ipg
	it := descU64(v.desc(grp), 0x08, 0x28) // checked by checkDesc
	return v.readAt(b[:ext4spec.InodeSize], int64(it)*ext4spec.BlockSize+int64(idx)*ext4spec.InodeSize)
}

func (v *volume) inodeCsumOK(ino uint32, b []byte) bool {
	return ext4spec.InodeChecksum(b, v.fsSeed, ino) == ext4spec.StoredInodeChecksum(b)
}

func (v *volume) seedFor(ino, gen uint32) uint32 {
	return ext4spec.InodeSeed(v.fsSeed, ino, gen)
}
