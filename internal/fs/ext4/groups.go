package ext4

import (
	"encoding/binary"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

func putU16(b []byte, v uint16) { binary.LittleEndian.PutUint16(b, v) }
func putU32(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }
func getU16(b []byte) uint16    { return binary.LittleEndian.Uint16(b) }

// winInodes is how many inode-table slots are staged before being written:
// new inodes are numbered in order, so a small window turns one write per
// inode into one write per 64 KiB. Slots left blank (directories, finished
// later) are written directly once the window has moved on.
const winInodes = 256

type inodeWindow struct {
	valid  bool
	grp    uint32
	base   uint32 // index in the group of the first slot
	n      uint32
	lo, hi int // dirty byte range
	data   []byte
}

func (w *Writer) inodePos(ino uint32) (grp, idx uint32) {
	return (ino - 1) / w.g.ipg, (ino - 1) % w.g.ipg
}

func (w *Writer) inodeOffset(grp, idx uint32) int64 {
	return w.off + int64(w.g.itable[grp])*ext4spec.BlockSize + int64(idx)*ext4spec.InodeSize
}

func (win *inodeWindow) has(grp, idx uint32) bool {
	return win.valid && grp == win.grp && idx >= win.base && idx < win.base+win.n
}

func (w *Writer) writeInodeBytes(ino uint32, b []byte) error {
	grp, idx := w.inodePos(ino)
	win := &w.win
	if !win.has(grp, idx) {
		ahead := !win.valid || grp > win.grp || (grp == win.grp && idx >= win.base+win.n)
		if !ahead {
			if _, err := w.f.WriteAt(b[:ext4spec.InodeSize], w.inodeOffset(grp, idx)); err != nil {
				return fmt.Errorf("ext4: write inode: %w", err)
			}
			return nil
		}
		if err := w.flushWindow(); err != nil {
			return err
		}
		base := idx &^ (winInodes - 1)
		*win = inodeWindow{valid: true, grp: grp, base: base, n: min(winInodes, w.g.ipg-base), lo: len(win.data), data: win.data}
		clear(win.data)
	}
	o := int(idx-win.base) * ext4spec.InodeSize
	copy(win.data[o:], b[:ext4spec.InodeSize])
	win.lo = min(win.lo, o&^(ext4spec.BlockSize-1))
	win.hi = max(win.hi, (o+ext4spec.InodeSize+ext4spec.BlockSize-1)&^(ext4spec.BlockSize-1))
	return nil
}

func (w *Writer) readInodeBytes(ino uint32, b []byte) error {
	grp, idx := w.inodePos(ino)
	if w.win.has(grp, idx) {
		o := int(idx-w.win.base) * ext4spec.InodeSize
		copy(b, w.win.data[o:o+ext4spec.InodeSize])
		return nil
	}
	if _, err := w.f.ReadAt(b[:ext4spec.InodeSize], w.inodeOffset(grp, idx)); err != nil {
		return fmt.Errorf("ext4: read inode %d: %w", ino, err)
	}
	return nil
}

func (w *Writer) flushWindow() error {
	win := &w.win
	if !win.valid || win.hi <= win.lo {
		return nil
	}
	if _, err := w.f.WriteAt(win.data[win.lo:win.hi], w.inodeOffset(win.grp, win.base)+int64(win.lo)); err != nil {
		return fmt.Errorf("ext4: write inodes: %w", err)
	}
	win.lo, win.hi = len(win.data), 0
	return nil
}

// writeJournal allocates an empty JBD2 journal for inode 8; only its
// superblock is written, the rest reads as zeros.
func (w *Writer) writeJournal() error {
	n := uint64(w.g.journalBlocks)
	if n == 0 {
		return nil
	}
	var exts []ext4spec.Extent
	if err := w.writeBlocks(&exts, 0, nil, n); err != nil {
		return err
	}
	ext4spec.PutEmptyJournalSuper(w.blk, n, w.opts.UUID[:])
	if err := w.writeAt(w.blk, exts[0].Pblk); err != nil {
		return err
	}
	in := &inodeInfo{mode: ext4spec.ModeRegular | 0o600, size: n * ext4spec.BlockSize, links: 1, flags: ext4spec.FlagExtents, time: w.opts.Time}
	if err := w.finishInode(ext4spec.JournalIno, exts, in, n); err != nil {
		return err
	}
	// The superblock keeps a copy of the journal inode's block map.
	for i := 0; i < 15; i++ {
		w.jnlBlocks[i] = binary.LittleEndian.Uint32(in.iblock[4*i:])
	}
	w.jnlBlocks[15] = uint32(in.size >> 32)
	w.jnlBlocks[16] = uint32(in.size)
	return nil
}

func setBits(b []byte, from, to uint64) {
	for i := from; i < to; {
		if i%8 == 0 && to-i >= 8 {
			b[i/8] = 0xFF
			i += 8
			continue
		}
		b[i/8] |= 1 << (i % 8)
		i++
	}
}

func countBits(b []byte, n uint64) uint64 {
	var c uint64
	for i := uint64(0); i < n; i++ {
		if b[i/8]&(1<<(i%8)) != 0 {
			c++
		}
	}
	return c
}

// writeGroups derives every group's bitmaps from the allocation cursors,
// then writes the descriptors and superblock copies.
func (w *Writer) writeGroups() error {
	g := w.g
	gdt := make([]byte, int(g.gdtBlocks)*ext4spec.BlockSize)
	b := w.blk
	le := binary.LittleEndian
	var freeBlocks, freeInodes uint64
	usedInodesTotal := uint64(w.nextIno - 1)
	ri := 0
	for grp := uint32(0); grp < g.groups; grp++ {
		start, nb := g.groupStart(grp), g.groupBlocks(grp)
		end := start + nb
		clear(b)
		if top := min(w.a.next, end); top > start {
			setBits(b, 0, top-start)
		}
		for ri < len(g.reserved) && g.reserved[ri].end <= start {
			ri++
		}
		for i := ri; i < len(g.reserved) && g.reserved[i].start < end; i++ {
			r := g.reserved[i]
			setBits(b, max(r.start, start)-start, min(r.end, end)-start)
		}
		used := countBits(b, nb)
		setBits(b, nb, blocksPerGroup) // padding past the last block
		bfree := nb - used
		bcsum := ext4spec.CRC32C(w.fsSeed, b)
		if err := w.writeAt(b, g.bbitmap[grp]); err != nil {
			return err
		}

		base := uint64(grp) * uint64(g.ipg)
		iused := min(max(usedInodesTotal, base)-base, uint64(g.ipg))
		flags := uint16(ext4spec.BgInodeTableZeroed)
		var icsum uint32
		if iused == 0 {
			flags |= ext4spec.BgInodeUninit // the kernel and e2fsck treat its bitmap as empty
		} else {
			clear(b)
			setBits(b, 0, iused)
			setBits(b, uint64(g.ipg), blocksPerGroup)
			icsum = ext4spec.CRC32C(w.fsSeed, b[:g.ipg/8])
			if err := w.writeAt(b, g.ibitmap[grp]); err != nil {
				return err
			}
		}
		ifree := uint64(g.ipg) - iused
		freeBlocks += bfree
		freeInodes += ifree

		d := gdt[int(grp)*ext4spec.DescSize : int(grp+1)*ext4spec.DescSize]
		le.PutUint32(d[0x00:], uint32(g.bbitmap[grp]))
		le.PutUint32(d[0x04:], uint32(g.ibitmap[grp]))
		le.PutUint32(d[0x08:], uint32(g.itable[grp]))
		le.PutUint16(d[0x0C:], uint16(bfree))
		le.PutUint16(d[0x0E:], uint16(ifree))
		le.PutUint16(d[0x10:], uint16(w.dirs[grp]))
		le.PutUint16(d[0x12:], flags)
		le.PutUint16(d[0x18:], uint16(bcsum))
		le.PutUint16(d[0x1A:], uint16(icsum))
		le.PutUint16(d[0x1C:], uint16(ifree)) // itable_unused: inodes are used from the front
		le.PutUint32(d[0x20:], uint32(g.bbitmap[grp]>>32))
		le.PutUint32(d[0x24:], uint32(g.ibitmap[grp]>>32))
		le.PutUint32(d[0x28:], uint32(g.itable[grp]>>32))
		le.PutUint16(d[0x2C:], uint16(bfree>>16))
		le.PutUint16(d[0x2E:], uint16(ifree>>16))
		le.PutUint16(d[0x30:], uint16(w.dirs[grp]>>16))
		le.PutUint16(d[0x32:], uint16(ifree>>16))
		le.PutUint16(d[0x38:], uint16(bcsum>>16))
		le.PutUint16(d[0x3A:], uint16(icsum>>16))
		le.PutUint16(d[0x1E:], ext4spec.DescChecksum(w.fsSeed, grp, d))
	}
	w.stats.BlocksUsed = g.blocks - freeBlocks
	sb := w.superblock(freeBlocks, freeInodes)
	for grp := uint32(0); grp < g.groups; grp++ {
		if !ext4spec.HasSuperBackup(grp) {
			continue
		}
		le.PutUint16(sb[0x5A:], uint16(grp))
		ext4spec.SetSuperChecksum(sb)
		at := g.groupStart(grp)
		off := int64(0)
		if grp == 0 {
			off = 1024 // boot sector first
		}
		if _, err := w.f.WriteAt(sb, w.off+int64(at)*ext4spec.BlockSize+off); err != nil {
			return fmt.Errorf("ext4: write superblock: %w", err)
		}
		if err := w.writeAt(gdt, at+1); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) superblock(freeBlocks, freeInodes uint64) []byte {
	g := w.g
	sb := make([]byte, 1024)
	le := binary.LittleEndian
	t := uint32(w.opts.Time)
	le.PutUint32(sb[0x00:], g.ipg*g.groups)
	le.PutUint32(sb[0x04:], uint32(g.blocks))
	le.PutUint32(sb[0x0C:], uint32(freeBlocks))
	le.PutUint32(sb[0x10:], uint32(freeInodes))
	le.PutUint32(sb[0x14:], 0) // first data block
	le.PutUint32(sb[0x18:], 2) // log2(4096) - 10
	le.PutUint32(sb[0x1C:], 2)
	le.PutUint32(sb[0x20:], blocksPerGroup)
	le.PutUint32(sb[0x24:], blocksPerGroup)
	le.PutUint32(sb[0x28:], g.ipg)
	le.PutUint32(sb[0x30:], t)      // s_wtime
	le.PutUint16(sb[0x36:], 0xFFFF) // s_max_mnt_count = -1
	le.PutUint16(sb[0x38:], ext4spec.SuperMagic)
	le.PutUint16(sb[0x3A:], ext4spec.StateValid)
	le.PutUint16(sb[0x3C:], 1) // errors=continue
	le.PutUint32(sb[0x40:], t) // s_lastcheck
	le.PutUint32(sb[0x4C:], 1) // dynamic rev
	le.PutUint32(sb[0x54:], firstIno)
	le.PutUint16(sb[0x58:], ext4spec.InodeSize)
	compat := uint32(ext4spec.CompatExtAttr | ext4spec.CompatDirIndex)
	if g.journalBlocks > 0 {
		compat |= ext4spec.CompatHasJournal
	}
	le.PutUint32(sb[0x5C:], compat)
	le.PutUint32(sb[0x60:], ext4spec.IncompatFiletype|ext4spec.IncompatExtents|ext4spec.Incompat64bit|ext4spec.IncompatFlexBg)
	le.PutUint32(sb[0x64:], ext4spec.RoCompatSparse|ext4spec.RoCompatLargeFile|ext4spec.RoCompatHugeFile|
		ext4spec.RoCompatDirNlink|ext4spec.RoCompatExtraIsize|ext4spec.RoCompatMetaCsum)
	copy(sb[0x68:0x78], w.opts.UUID[:])
	copy(sb[0x78:0x88], w.opts.Label)
	if g.journalBlocks > 0 {
		le.PutUint32(sb[0xE0:], ext4spec.JournalIno)
		for i, v := range w.jnlBlocks {
			le.PutUint32(sb[0x10C+4*i:], v)
		}
		sb[0xFD] = 1 // s_jnl_backup_type: inode blocks
	}
	copy(sb[0xEC:0xFC], w.opts.HashSeed[:])
	sb[0xFC] = dxHashHalfMD4
	le.PutUint16(sb[0xFE:], ext4spec.DescSize)
	le.PutUint32(sb[0x100:], 0x4|0x8) // default mount: user_xattr, acl
	le.PutUint32(sb[0x108:], t)       // s_mkfs_time
	le.PutUint32(sb[0x150:], uint32(g.blocks>>32))
	le.PutUint32(sb[0x158:], uint32(freeBlocks>>32))
	le.PutUint16(sb[0x15C:], extraIsize)
	le.PutUint16(sb[0x15E:], extraIsize)
	le.PutUint32(sb[0x160:], 1) // signed directory hash
	sb[0x174] = 4               // log2(flex_bg size)
	sb[0x175] = 1               // crc32c
	le.PutUint64(sb[0x178:], (g.blocks-freeBlocks)*(ext4spec.BlockSize/1024))
	return sb
}
