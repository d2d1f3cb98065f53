package ext4

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// NormalizeOptions say what the history-dependent fields become.
type NormalizeOptions struct {
	Time  int64 // every inode time and superblock time becomes this (or, with Clamp, min(t, Time))
	Clamp bool  // only lower times above Time (SOURCE_DATE_EPOCH semantics); default: set all to Time
}

// NormalizeReport says what Normalize changed. A second run over its own
// output reports zeros, false and no fields.
type NormalizeReport struct {
	Inodes            int  // in-use, initialised inodes visited
	TimesChanged      int  // inodes with at least one time changed
	GenerationsZeroed int  // inodes whose i_generation was not 0
	VersionsZeroed    int  // inodes whose i_version (NFS change counter) was not 0
	BlocksResealed    int  // extent-tree and directory blocks re-checksummed for generation 0
	FreeInodesCleared int  // free inode slots still holding a deleted inode, zeroed
	JournalCleared    bool // journal superblock reset and/or old transactions removed
	SuperblockFields  []string
	XattrInodes       []uint32 // inodes with an xattr block (i_file_acl): left alone
}

// Feature bits Normalize understands; anything else in incompat means a
// layout it was not written for.
const (
	compatHasJournal   = 0x4
	compatSparseSuper2 = 0x200
	incompatFiletype   = 0x2
	incompatRecover    = 0x4
	incompatExtents    = 0x40
	incompat64bit      = 0x80
	incompatFlexBg     = 0x200
	incompatCsumSeed   = 0x2000
	incompatLargeDir   = 0x4000
	roCompatSparse     = 0x1
	roCompatBigalloc   = 0x200
	roCompatMetaCsum   = 0x400

	stateValid = 0x1
	stateError = 0x2

	jbd2Magic = 0xC03B3998
)

type normalizer struct {
	f       *os.File
	off     int64
	o       NormalizeOptions
	sb      []byte
	fsSeed  uint32
	blocks  uint64
	groups  uint32
	ipg     uint32
	bpg     uint32
	gdt     []byte
	gdtBlks uint32
	rep     NormalizeReport
	blk     []byte
	dry     bool // verify only: writeAt does nothing
}

// Normalize rewrites, in place, the fields of the ext4 filesystem at
// f[offset:] that a Linux kernel fills from the clock, its random number
// generator or its journal history, so that two images that went through
// the same operations become byte-identical. It only accepts cleanly
// unmounted filesystems with this package's layout (4 KiB blocks, 256-byte
// inodes, 64bit, extents, metadata_csum) and verifies everything it reads
// (superblock, descriptor, inode, extent and directory checksums) before it
// writes anything; a write error can still leave it half done. Data blocks are never touched; directory and extent-tree
// blocks only get their checksums recomputed where the owner's generation
// changes (their checksum is seeded with it).
func Normalize(f *os.File, offset int64, o NormalizeOptions) (NormalizeReport, error) {
	n := &normalizer{f: f, off: offset, o: o, blk: make([]byte, blockSize)}
	if err := n.load(); err != nil {
		return NormalizeReport{}, err
	}
	jnl, err := n.checkJournal()
	if err != nil {
		return NormalizeReport{}, err
	}
	// A dry pass first verifies every checksum Normalize relies on, so a
	// damaged image is refused before any byte of it changes.
	for _, dry := range []bool{true, false} {
		n.dry, n.rep = dry, NormalizeReport{}
		for grp := uint32(0); grp < n.groups; grp++ {
			if err := n.group(grp); err != nil {
				return n.rep, err
			}
		}
	}
	if jnl != nil {
		if n.rep.JournalCleared, err = n.clearJournal(jnl); err != nil {
			return n.rep, err
		}
	}
	if err := n.superblocks(); err != nil {
		return n.rep, err
	}
	return n.rep, nil
}

func (n *normalizer) readAt(b []byte, pos int64) error {
	if _, err := n.f.ReadAt(b, n.off+pos); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("ext4: normalize: %s ends before byte %d of the filesystem", n.f.Name(), pos+int64(len(b)))
		}
		return fmt.Errorf("ext4: normalize: read: %w", err)
	}
	return nil
}

func (n *normalizer) writeAt(b []byte, pos int64) error {
	if n.dry {
		return nil
	}
	if _, err := n.f.WriteAt(b, n.off+pos); err != nil {
		return fmt.Errorf("ext4: normalize: write: %w", err)
	}
	return nil
}

// load reads and validates the superblock and group descriptors.
func (n *normalizer) load() error {
	le := binary.LittleEndian
	sb := make([]byte, 1024)
	if err := n.readAt(sb, 1024); err != nil {
		return err
	}
	if getU16(sb[0x38:]) != 0xEF53 {
		return fmt.Errorf("ext4: normalize: %s at offset %d is not an ext2/3/4 filesystem (no superblock magic)", n.f.Name(), n.off)
	}
	compat, incompat, ro := le.Uint32(sb[0x5C:]), le.Uint32(sb[0x60:]), le.Uint32(sb[0x64:])
	var missing []string
	for _, req := range []struct {
		ok   bool
		name string
	}{
		{le.Uint32(sb[0x18:]) == 2, "4 KiB blocks"},
		{getU16(sb[0x58:]) == inodeSize, "256-byte inodes"},
		{incompat&incompatExtents != 0, "extents"},
		{incompat&incompat64bit != 0 && getU16(sb[0xFE:]) == descSize, "64bit with 64-byte group descriptors"},
		{ro&roCompatMetaCsum != 0 && sb[0x175] == 1, "metadata_csum (crc32c)"},
		{ro&roCompatSparse != 0 && compat&compatSparseSuper2 == 0, "sparse_super"},
		{le.Uint32(sb[0x14:]) == 0, "first data block 0"},
		{le.Uint32(sb[0x4C:]) == 1, "dynamic revision"},
	} {
		if !req.ok {
			missing = append(missing, req.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("ext4: normalize: not an ext4 filesystem of this writer's layout: lacks %v", missing)
	}
	if got := crc32c(^uint32(0), sb[:0x3FC]); got != le.Uint32(sb[0x3FC:]) {
		return fmt.Errorf("ext4: normalize: superblock checksum mismatch (%#x, computed %#x)", le.Uint32(sb[0x3FC:]), got)
	}
	known := uint32(incompatFiletype | incompatRecover | incompatExtents | incompat64bit | incompatFlexBg | incompatCsumSeed | incompatLargeDir)
	if x := incompat &^ known; x != 0 {
		return fmt.Errorf("ext4: normalize: unsupported incompatible features %#x", x)
	}
	if ro&roCompatBigalloc != 0 {
		return errors.New("ext4: normalize: bigalloc is not supported")
	}
	// Refusals for a filesystem still in use or damaged: normalising would
	// bake a half-written state into the image.
	state := getU16(sb[0x3A:])
	switch {
	case incompat&incompatRecover != 0:
		return errors.New("ext4: normalize: filesystem was not cleanly unmounted (needs_recovery set: journal must be replayed first)")
	case state&stateValid == 0:
		return errors.New("ext4: normalize: filesystem was not cleanly unmounted (state not clean)")
	case state&stateError != 0:
		return errors.New("ext4: normalize: filesystem has errors (state: with errors); run e2fsck first")
	case le.Uint32(sb[0xE8:]) != 0:
		return fmt.Errorf("ext4: normalize: orphan list is not empty (s_last_orphan %d)", le.Uint32(sb[0xE8:]))
	}
	n.sb = sb
	n.fsSeed = crc32c(^uint32(0), sb[0x68:0x78])
	if incompat&incompatCsumSeed != 0 {
		n.fsSeed = le.Uint32(sb[0x270:])
	}
	n.blocks = uint64(le.Uint32(sb[0x04:])) | uint64(le.Uint32(sb[0x150:]))<<32
	n.bpg = le.Uint32(sb[0x20:])
	n.ipg = le.Uint32(sb[0x28:])
	if n.bpg == 0 || n.bpg > blockSize*8 || n.ipg == 0 || n.ipg > blockSize*8 || n.ipg%inodesPerBlock != 0 {
		return fmt.Errorf("ext4: normalize: implausible geometry (%d blocks, %d inodes per group)", n.bpg, n.ipg)
	}
	n.groups = uint32((n.blocks + uint64(n.bpg) - 1) / uint64(n.bpg))
	if uint64(n.groups)*uint64(n.ipg) != uint64(le.Uint32(sb[0x00:])) {
		return fmt.Errorf("ext4: normalize: inode count %d is not %d groups x %d", le.Uint32(sb[0x00:]), n.groups, n.ipg)
	}
	if st, err := n.f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() < n.off+int64(n.blocks)*blockSize {
		return fmt.Errorf("ext4: normalize: %s is %d bytes, the filesystem needs %d from offset %d", n.f.Name(), st.Size(), int64(n.blocks)*blockSize, n.off)
	}
	n.gdtBlks = uint32((uint64(n.groups)*descSize + blockSize - 1) / blockSize)
	n.gdt = make([]byte, int(n.gdtBlks)*blockSize)
	if err := n.readAt(n.gdt, blockSize); err != nil {
		return err
	}
	for grp := uint32(0); grp < n.groups; grp++ {
		d := n.desc(grp)
		if got := n.descCsum(grp, d); got != getU16(d[0x1E:]) {
			return fmt.Errorf("ext4: normalize: group %d descriptor checksum mismatch", grp)
		}
	}
	return nil
}

func (n *normalizer) desc(grp uint32) []byte {
	return n.gdt[int(grp)*descSize : int(grp+1)*descSize]
}

func (n *normalizer) descCsum(grp uint32, d []byte) uint16 {
	c := crc32cU32(n.fsSeed, grp)
	c = crc32c(c, d[:0x1E])
	c = crc32c(c, []byte{0, 0})
	return uint16(crc32c(c, d[0x20:descSize]))
}

func descU64(d []byte, lo, hi int) uint64 {
	return uint64(binary.LittleEndian.Uint32(d[lo:])) | uint64(binary.LittleEndian.Uint32(d[hi:]))<<32
}

func descU32(d []byte, lo, hi int) uint32 {
	return uint32(getU16(d[lo:])) | uint32(getU16(d[hi:]))<<16
}

// readInode reads inode ino straight from its table.
func (n *normalizer) readInode(ino uint32, b []byte) error {
	grp, idx := (ino-1)/n.ipg, (ino-1)%n.ipg
	it := descU64(n.desc(grp), 0x08, 0x28)
	return n.readAt(b[:inodeSize], int64(it)*blockSize+int64(idx)*inodeSize)
}

// inodeCsumOK checks b's checksum as the kernel computes it, seeded with
// the inode's current generation.
func (n *normalizer) inodeCsumOK(ino uint32, b []byte) bool {
	le := binary.LittleEndian
	c := make([]byte, inodeSize)
	copy(c, b)
	want := uint32(le.Uint16(c[0x7C:]))
	le.PutUint16(c[0x7C:], 0)
	hasHi := le.Uint16(c[0x80:]) >= 4
	if hasHi {
		want |= uint32(le.Uint16(c[0x82:])) << 16
		le.PutUint16(c[0x82:], 0)
	}
	got := crc32c(n.seedFor(ino, le.Uint32(c[0x64:])), c)
	if !hasHi {
		got &= 0xFFFF
	}
	return got == want
}

func (n *normalizer) seedFor(ino, gen uint32) uint32 {
	return crc32cU32(crc32cU32(n.fsSeed, ino), gen)
}

// group normalises the initialised part of one group's inode table.
func (n *normalizer) group(grp uint32) error {
	d := n.desc(grp)
	if getU16(d[0x12:])&bgInodeUninit != 0 {
		return nil // never used: the table may not even be zeroed
	}
	used := n.ipg - min(descU32(d, 0x1C, 0x32), n.ipg)
	if used == 0 {
		return nil
	}
	bm := make([]byte, blockSize)
	if err := n.readAt(bm, int64(descU64(d, 0x04, 0x24))*blockSize); err != nil {
		return err
	}
	itPos := int64(descU64(d, 0x08, 0x28)) * blockSize
	tbl := make([]byte, int((used+inodesPerBlock-1)/inodesPerBlock)*blockSize)
	if err := n.readAt(tbl, itPos); err != nil {
		return err
	}
	dirty := make([]bool, len(tbl)/blockSize)
	for idx := uint32(0); idx < used; idx++ {
		b := tbl[int(idx)*inodeSize : int(idx+1)*inodeSize]
		ino := grp*n.ipg + idx + 1
		inUse := bm[idx/8]&(1<<(idx%8)) != 0
		changed := false
		var err error
		switch {
		case isZero(b):
			// Never initialised (reserved inodes 3-7, 9, 10): nothing to
			// normalise, and an all-zero inode needs no checksum.
		case !inUse:
			// A deleted inode keeps its dtime, times and random
			// generation; a fresh table slot is zero.
			clear(b)
			n.rep.FreeInodesCleared++
			changed = true
		default:
			changed, err = n.inode(ino, b)
		}
		if err != nil {
			return err
		}
		if changed {
			dirty[int(idx)/inodesPerBlock] = true
		}
	}
	for i, dt := range dirty {
		if dt {
			if err := n.writeAt(tbl[i*blockSize:(i+1)*blockSize], itPos+int64(i)*blockSize); err != nil {
				return err
			}
		}
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Inode time fields: the seconds word and, where i_extra_isize covers it,
// the extra word (epoch bits and nanoseconds).
var inodeTimes = []struct{ lo, extra int }{
	{0x08, 0x8C}, // atime
	{0x0C, 0x84}, // ctime
	{0x10, 0x88}, // mtime
	{0x90, 0x94}, // crtime (only in the extra area)
}

// inode normalises one in-use inode in b; it reports whether b changed.
func (n *normalizer) inode(ino uint32, b []byte) (bool, error) {
	le := binary.LittleEndian
	if !n.inodeCsumOK(ino, b) {
		return false, fmt.Errorf("ext4: normalize: inode %d checksum mismatch", ino)
	}
	n.rep.Inodes++
	orig := bytes.Clone(b)
	extra := 0x80 + int(le.Uint16(b[0x80:]))
	if le.Uint16(b[0x80:]) > inodeSize-0x80 {
		return false, fmt.Errorf("ext4: normalize: inode %d: i_extra_isize %d too large", ino, le.Uint16(b[0x80:]))
	}
	has := func(o int) bool { return o < 0x80 || o+4 <= extra }

	timeChanged := false
	for _, t := range inodeTimes {
		if !has(t.lo) {
			continue
		}
		sec := int64(int32(le.Uint32(b[t.lo:])))
		var x uint32
		if has(t.extra) {
			x = le.Uint32(b[t.extra:])
			sec += int64(x&3) << 32
		}
		if n.o.Clamp && (sec < n.o.Time || sec == n.o.Time && x>>2 == 0) {
			continue
		}
		lo, ex := encodeTime(n.o.Time)
		if le.Uint32(b[t.lo:]) != lo || has(t.extra) && x != ex {
			timeChanged = true
		}
		le.PutUint32(b[t.lo:], lo)
		if has(t.extra) {
			le.PutUint32(b[t.extra:], ex)
		}
	}
	if timeChanged {
		n.rep.TimesChanged++
	}
	// i_version counts changes since the inode was loaded, which depends
	// on timing (e.g. whether two writes fell in the same clock tick).
	if le.Uint32(b[0x24:]) != 0 || has(0x98) && le.Uint32(b[0x98:]) != 0 {
		n.rep.VersionsZeroed++
		le.PutUint32(b[0x24:], 0)
		if has(0x98) {
			le.PutUint32(b[0x98:], 0)
		}
	}
	if acl := uint64(le.Uint32(b[0x68:])) | uint64(le.Uint16(b[0x76:]))<<32; acl != 0 {
		n.rep.XattrInodes = append(n.rep.XattrInodes, ino)
	}
	if gen := le.Uint32(b[0x64:]); gen != 0 {
		if err := n.reseal(ino, b, n.seedFor(ino, gen), n.seedFor(ino, 0)); err != nil {
			return false, err
		}
		le.PutUint32(b[0x64:], 0)
		n.rep.GenerationsZeroed++
	}
	if bytes.Equal(b, orig) {
		return false, nil
	}
	setInodeChecksum(b, n.fsSeed, ino)
	return true, nil
}

// reseal re-checksums the blocks whose checksum is seeded with the inode's
// generation: extent-tree blocks and, for a directory, its leaf and htree
// blocks. Each is verified against the old seed first, so a block that is
// not what we think it is stops Normalize instead of being "fixed".
func (n *normalizer) reseal(ino uint32, in []byte, oldSeed, newSeed uint32) error {
	le := binary.LittleEndian
	flags := le.Uint32(in[0x20:])
	mode := le.Uint16(in[0x00:])
	isDir := mode&sIFMT == sIFDIR
	if flags&flagExtents == 0 {
		if isDir && le.Uint32(in[0x1C:]) != 0 {
			return fmt.Errorf("ext4: normalize: directory inode %d is not extent-mapped", ino)
		}
		return nil // fast symlink, device, or block-mapped file: no seeded blocks
	}
	size := uint64(le.Uint32(in[0x04:])) | uint64(le.Uint32(in[0x6C:]))<<32
	onNode := func(pblk uint64, b []byte) (bool, error) {
		tail := 12 + 12*int(le.Uint16(b[4:]))
		if tail+4 > blockSize {
			return false, fmt.Errorf("ext4: normalize: inode %d: extent block %d has eh_max %d", ino, pblk, le.Uint16(b[4:]))
		}
		if crc32c(oldSeed, b[:tail]) != le.Uint32(b[tail:]) {
			return false, fmt.Errorf("ext4: normalize: inode %d: extent block %d checksum mismatch", ino, pblk)
		}
		le.PutUint32(b[tail:], crc32c(newSeed, b[:tail]))
		n.rep.BlocksResealed++
		return true, nil
	}
	var onLeaf func(lblk uint32, pblk uint64, cnt uint32, unwritten bool) error
	if isDir {
		indexed := flags&flagIndex != 0
		onLeaf = func(lblk uint32, pblk uint64, cnt uint32, unwritten bool) error {
			if unwritten {
				return nil
			}
			for i := uint32(0); i < cnt; i++ {
				if uint64(lblk+i)*blockSize >= size {
					break
				}
				if err := n.resealDirBlock(ino, lblk+i, pblk+uint64(i), indexed, oldSeed, newSeed); err != nil {
					return err
				}
			}
			return nil
		}
	}
	_, err := n.walkExtents(ino, in[0x28:0x64], onNode, onLeaf)
	return err
}

// walkExtents visits an extent tree: onNode may modify a tree block (it is
// written back when it returns true), onLeaf gets every mapping. It returns
// the mappings when onLeaf is nil.
func (n *normalizer) walkExtents(ino uint32, root []byte,
	onNode func(pblk uint64, b []byte) (bool, error),
	onLeaf func(lblk uint32, pblk uint64, cnt uint32, unwritten bool) error) ([]extent, error) {
	le := binary.LittleEndian
	var out []extent
	var walk func(b []byte, depth int) error
	walk = func(b []byte, depth int) error {
		if le.Uint16(b[0:]) != extentMagic {
			return fmt.Errorf("ext4: normalize: inode %d: bad extent header", ino)
		}
		entries, d := int(le.Uint16(b[2:])), int(le.Uint16(b[6:]))
		if d != depth || d > 5 || 12+12*entries > len(b) {
			return fmt.Errorf("ext4: normalize: inode %d: corrupt extent tree", ino)
		}
		for i := 0; i < entries; i++ {
			e := b[12+12*i:]
			if d == 0 {
				cnt := uint32(le.Uint16(e[4:]))
				unwritten := cnt > maxExtentLen
				if unwritten {
					cnt -= maxExtentLen
				}
				p := uint64(le.Uint32(e[8:])) | uint64(le.Uint16(e[6:]))<<32
				if p+uint64(cnt) > n.blocks {
					return fmt.Errorf("ext4: normalize: inode %d: extent beyond the filesystem", ino)
				}
				out = append(out, extent{lblk: le.Uint32(e[0:]), len: cnt, pblk: p})
				if onLeaf != nil {
					if err := onLeaf(le.Uint32(e[0:]), p, cnt, unwritten); err != nil {
						return err
					}
				}
				continue
			}
			child := uint64(le.Uint32(e[4:])) | uint64(le.Uint16(e[8:]))<<32
			if child >= n.blocks {
				return fmt.Errorf("ext4: normalize: inode %d: extent index beyond the filesystem", ino)
			}
			cb := make([]byte, blockSize)
			if err := n.readAt(cb, int64(child)*blockSize); err != nil {
				return err
			}
			if err := walk(cb, d-1); err != nil {
				return err
			}
			if onNode != nil {
				w, err := onNode(child, cb)
				if err != nil {
					return err
				}
				if w {
					if err := n.writeAt(cb, int64(child)*blockSize); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	if le.Uint16(root[0:]) != extentMagic {
		return nil, fmt.Errorf("ext4: normalize: inode %d: bad extent header", ino)
	}
	return out, walk(root, int(le.Uint16(root[6:])))
}

// resealDirBlock re-checksums one directory block: a leaf (checksum in the
// fake dirent at its end) or an htree root/node (checksum in the dx_tail
// after the entries).
func (n *normalizer) resealDirBlock(ino, lblk uint32, pblk uint64, indexed bool, oldSeed, newSeed uint32) error {
	le := binary.LittleEndian
	b := n.blk
	if err := n.readAt(b, int64(pblk)*blockSize); err != nil {
		return err
	}
	t := b[dirLeafSpace:]
	// htree blocks first: the kernel turns a leaf into the root in place, so
	// the root can still end in what looks like a leaf's tail (it is the
	// dx_tail's reserved word). Interior nodes start with an empty dirent
	// spanning the block, which a checksummed leaf never has.
	dx := indexed && (lblk == 0 || le.Uint32(b[0:]) == 0 && le.Uint16(b[4:]) == blockSize)
	switch {
	case dx:
		at := 0x08 // interior node: a fake empty dirent, then count/limit
		if lblk == 0 {
			at = 0x18 + int(b[0x18+5]) // root: "." and "..", then dx_root_info
		}
		limit, count := int(le.Uint16(b[at:])), int(le.Uint16(b[at+2:]))
		tail := at + 8*limit
		if count > limit || tail+8 > blockSize {
			return fmt.Errorf("ext4: normalize: directory %d block %d: not a checksummed htree block", ino, lblk)
		}
		csum := func(seed uint32) uint32 {
			c := crc32c(seed, b[:at+8*count])
			c = crc32c(c, b[tail:tail+4])
			return crc32c(c, []byte{0, 0, 0, 0})
		}
		if csum(oldSeed) != le.Uint32(b[tail+4:]) {
			return fmt.Errorf("ext4: normalize: directory %d htree block %d checksum mismatch", ino, lblk)
		}
		le.PutUint32(b[tail+4:], csum(newSeed))
	case le.Uint32(t[0:]) == 0 && le.Uint16(t[4:]) == 12 && t[6] == 0 && t[7] == 0xDE:
		if crc32c(oldSeed, b[:dirLeafSpace]) != le.Uint32(t[8:]) {
			return fmt.Errorf("ext4: normalize: directory %d block %d checksum mismatch", ino, lblk)
		}
		le.PutUint32(t[8:], crc32c(newSeed, b[:dirLeafSpace]))
	default:
		return fmt.Errorf("ext4: normalize: directory %d block %d has no checksum tail", ino, lblk)
	}
	n.rep.BlocksResealed++
	return n.writeAt(b, int64(pblk)*blockSize)
}

// journal is where inode 8's blocks are.
type journal struct {
	exts   []extent
	blocks uint64
}

// checkJournal finds the journal and refuses one that still holds
// transactions to replay.
func (n *normalizer) checkJournal() (*journal, error) {
	le := binary.LittleEndian
	if le.Uint32(n.sb[0x5C:])&compatHasJournal == 0 {
		return nil, nil
	}
	if ino := le.Uint32(n.sb[0xE0:]); ino != journalIno {
		return nil, fmt.Errorf("ext4: normalize: journal is not inode 8 (s_journal_inum %d)", ino)
	}
	in := make([]byte, inodeSize)
	if err := n.readInode(journalIno, in); err != nil {
		return nil, err
	}
	if le.Uint32(in[0x20:])&flagExtents == 0 {
		return nil, errors.New("ext4: normalize: journal inode is not extent-mapped")
	}
	exts, err := n.walkExtents(journalIno, in[0x28:0x64], nil, nil)
	if err != nil {
		return nil, err
	}
	size := uint64(le.Uint32(in[0x04:])) | uint64(le.Uint32(in[0x6C:]))<<32
	j := &journal{exts: exts, blocks: size / blockSize}
	var mapped uint64
	for _, e := range exts {
		mapped += uint64(e.len)
	}
	if len(exts) == 0 || exts[0].lblk != 0 || mapped != j.blocks {
		return nil, fmt.Errorf("ext4: normalize: journal inode maps %d blocks of %d", mapped, j.blocks)
	}
	b := n.blk
	if err := n.readAt(b, int64(exts[0].pblk)*blockSize); err != nil {
		return nil, err
	}
	be := binary.BigEndian
	if be.Uint32(b[0:]) != jbd2Magic {
		return nil, errors.New("ext4: normalize: journal has no JBD2 superblock")
	}
	if be.Uint32(b[0x1C:]) != 0 {
		return nil, errors.New("ext4: normalize: journal is not empty (s_start != 0): filesystem needs recovery")
	}
	return j, nil
}

// freshJournalSuper is the journal superblock Writer writes for an empty
// journal of n blocks.
func freshJournalSuper(b []byte, n uint64, uuid []byte) {
	clear(b)
	be := binary.BigEndian
	be.PutUint32(b[0x00:], jbd2Magic)
	be.PutUint32(b[0x04:], 4) // superblock v2
	be.PutUint32(b[0x0C:], blockSize)
	be.PutUint32(b[0x10:], uint32(n)) // s_maxlen
	be.PutUint32(b[0x14:], 1)         // s_first
	be.PutUint32(b[0x18:], 1)         // s_sequence
	copy(b[0x30:0x40], uuid)
	be.PutUint32(b[0x40:], 1) // s_nr_users
}

// clearJournal resets the journal superblock to a fresh one and removes the
// old transactions: the kernel needs neither once the journal is empty
// (s_start 0), and it sets its features (csum v3, 64bit) again on mount.
func (n *normalizer) clearJournal(j *journal) (bool, error) {
	changed := false
	cur := make([]byte, blockSize)
	if err := n.readAt(cur, int64(j.exts[0].pblk)*blockSize); err != nil {
		return false, err
	}
	fresh := make([]byte, blockSize)
	freshJournalSuper(fresh, j.blocks, n.sb[0x68:0x78])
	if !bytes.Equal(cur, fresh) {
		if err := n.writeAt(fresh, int64(j.exts[0].pblk)*blockSize); err != nil {
			return false, err
		}
		changed = true
	}
	for i, e := range j.exts {
		start, cnt := e.pblk, uint64(e.len)
		if i == 0 {
			start, cnt = start+1, cnt-1
		}
		c, err := n.zeroRange(int64(start)*blockSize, int64(cnt)*blockSize)
		if err != nil {
			return changed, err
		}
		changed = changed || c
	}
	return changed, nil
}

// zeroRange makes [pos, pos+size) of the filesystem read as zeros, punching
// holes (the image stays sparse) over chunks that hold anything else and
// skipping existing holes. It reports whether any byte changed.
func (n *normalizer) zeroRange(pos, size int64) (bool, error) {
	fd := int(n.f.Fd())
	// SEEK_DATA moves the shared file offset; put it back for the caller.
	if saved, err := n.f.Seek(0, io.SeekCurrent); err == nil {
		defer n.f.Seek(saved, io.SeekStart)
	}
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	changed := false
	abs, end := n.off+pos, n.off+pos+size
	for abs < end {
		d, err := unix.Seek(fd, abs, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			return changed, nil // only a hole up to EOF
		case err != nil:
			d = abs // no SEEK_DATA (e.g. a block device): read everything
		}
		if d >= end {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil || h > end {
			h = end
		}
		for p := d; p < h; {
			m := min(chunk, h-p)
			if _, err := n.f.ReadAt(buf[:m], p); err != nil {
				return changed, fmt.Errorf("ext4: normalize: read journal: %w", err)
			}
			if !isZero(buf[:m]) {
				if err := punch(n.f, p, m, buf[:m]); err != nil {
					return changed, err
				}
				changed = true
			}
			p += m
		}
		abs = h
	}
	return changed, nil
}

// punch zeroes [p, p+m), as a hole where the file supports it.
func punch(f *os.File, p, m int64, scratch []byte) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, p, m)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("ext4: normalize: punching hole: %w", err)
	}
	clear(scratch)
	if _, err := f.WriteAt(scratch, p); err != nil {
		return fmt.Errorf("ext4: normalize: zeroing journal: %w", err)
	}
	return nil
}

// superblocks normalises the primary superblock, then rewrites every
// sparse_super backup (superblock and descriptor table) from the primary,
// as Writer and e2fsprogs do, since the kernel only maintains the primary.
func (n *normalizer) superblocks() error {
	le := binary.LittleEndian
	sb := n.sb
	var fields []string
	set := func(name string, off int, v []byte) {
		if !bytes.Equal(sb[off:off+len(v)], v) {
			copy(sb[off:], v)
			fields = append(fields, name)
		}
	}
	u16 := func(v uint16) []byte { return le.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return le.AppendUint32(nil, v) }
	u64 := func(v uint64) []byte { return le.AppendUint64(nil, v) }

	// Superblock times are 40 bits: 32 low ones plus a high byte.
	for _, t := range []struct {
		name   string
		lo, hi int
	}{{"s_mtime", 0x2C, 0x275}, {"s_wtime", 0x30, 0x274}, {"s_lastcheck", 0x40, 0x277}, {"s_mkfs_time", 0x108, 0x276}} {
		cur := int64(le.Uint32(sb[t.lo:])) | int64(sb[t.hi])<<32
		if n.o.Clamp && cur <= n.o.Time {
			continue
		}
		v := max(n.o.Time, 0)
		set(t.name, t.lo, u32(uint32(v)))
		set(t.name+"_hi", t.hi, []byte{byte(v >> 32)})
	}
	set("s_mnt_count", 0x34, u16(0))
	set("s_last_mounted", 0x88, make([]byte, 64))
	set("s_error_count", 0x194, make([]byte, 0x200-0x194)) // first/last error time, ino, block, func, line
	set("s_error_time_hi", 0x278, make([]byte, 4))         // error times' high bytes and errcodes

	// Free counts: the sums of the descriptors, which the kernel keeps exact.
	var freeBlocks, freeInodes uint64
	for grp := uint32(0); grp < n.groups; grp++ {
		d := n.desc(grp)
		freeBlocks += uint64(descU32(d, 0x0C, 0x2C))
		freeInodes += uint64(descU32(d, 0x0E, 0x2E))
	}
	set("s_free_blocks_count", 0x0C, u32(uint32(freeBlocks)))
	set("s_free_blocks_count_hi", 0x158, u32(uint32(freeBlocks>>32)))
	set("s_free_inodes_count", 0x10, u32(uint32(freeInodes)))
	// Lifetime KiB written is pure history; use what Writer writes: the KiB
	// of blocks in use.
	set("s_kbytes_written", 0x178, u64((n.blocks-freeBlocks)*(blockSize/1024)))
	if len(fields) > 0 {
		le.PutUint32(sb[0x3FC:], crc32c(^uint32(0), sb[:0x3FC]))
		if err := n.writeAt(sb, 1024); err != nil {
			return err
		}
	}

	backup := bytes.Clone(sb)
	gdt := make([]byte, len(n.gdt))
	cur := make([]byte, 1024)
	sbChanged, gdtChanged := false, false
	for grp := uint32(1); grp < n.groups; grp++ {
		if !isBackupGroup(grp) {
			continue
		}
		at := int64(grp) * int64(n.bpg) * blockSize
		le.PutUint16(backup[0x5A:], uint16(grp))
		le.PutUint32(backup[0x3FC:], crc32c(^uint32(0), backup[:0x3FC]))
		if err := n.readAt(cur, at); err != nil {
			return err
		}
		if !bytes.Equal(cur, backup) {
			if err := n.writeAt(backup, at); err != nil {
				return err
			}
			sbChanged = true
		}
		if err := n.readAt(gdt, at+blockSize); err != nil {
			return err
		}
		if !bytes.Equal(gdt, n.gdt) {
			if err := n.writeAt(n.gdt, at+blockSize); err != nil {
				return err
			}
			gdtChanged = true
		}
	}
	if sbChanged {
		fields = append(fields, "backup superblocks")
	}
	if gdtChanged {
		fields = append(fields, "backup group descriptors")
	}
	n.rep.SuperblockFields = fields
	return nil
}
