package ext4

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// group normalises the initialised part of one group's inode table.
func (n *normalizer) group(grp uint32) error {
	d := n.desc(grp)
	if binary.LittleEndian.Uint16(d[0x12:])&ext4spec.BgInodeUninit != 0 {
		return nil // never used: the table may not even be zeroed
	}
	used := n.ipg - descU32(d, 0x1C, 0x32) // checkDesc: unused <= ipg
	if used == 0 {
		return nil
	}
	// checkDesc put the bitmap and the whole table inside the filesystem.
	bm := n.bm
	if err := n.readBlock(bm, descU64(d, 0x04, 0x24)); err != nil {
		return err
	}
	itPos := int64(descU64(d, 0x08, 0x28)) * ext4spec.BlockSize
	tblLen := int((used+ext4spec.InodesPerBlock-1)/ext4spec.InodesPerBlock) * ext4spec.BlockSize
	if cap(n.tbl) < tblLen {
		n.tbl = make([]byte, tblLen) // at most ipg x 256 = 8 MiB, once per size
	}
	tbl := n.tbl[:tblLen]
	if err := n.readAt(tbl, itPos); err != nil {
		return err
	}
	dirty := make([]bool, len(tbl)/ext4spec.BlockSize)
	for idx := uint32(0); idx < used; idx++ {
		b := tbl[int(idx)*ext4spec.InodeSize : int(idx+1)*ext4spec.InodeSize]
		ino := grp*n.ipg + idx + 1
		inUse := bm[idx/8]&(1<<(idx%8)) != 0
		changed := false
		var err error
		switch {
		case isZero(b):
			// Never initialised (reserved inodes 3-7, 9, 10): nothing to
			// normalise, and an all-zero inode needs no checksum.
		case !inUse && ino <= ext4spec.JournalIno:
			// Reserved inodes up to the journal's are always in use
			// (mke2fs marks them): one that is not is a damaged bitmap,
			// and clearing it would destroy the journal or the root.
			return fmt.Errorf("ext4: normalize: reserved inode %d is not marked in use", ino)
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
			dirty[int(idx)/ext4spec.InodesPerBlock] = true
		}
	}
	for i, dt := range dirty {
		if dt {
			if err := n.writeAt(tbl[i*ext4spec.BlockSize:(i+1)*ext4spec.BlockSize], itPos+int64(i)*ext4spec.BlockSize); err != nil {
				return err
			}
		}
	}
	return nil
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
		return false, fmt.Errorf("ext4: inode %d checksum mismatch", ino)
	}
	n.rep.Inodes++
	orig := bytes.Clone(b)
	extra := 0x80 + int(le.Uint16(b[0x80:]))
	if le.Uint16(b[0x80:]) > ext4spec.InodeSize-0x80 {
		return false, fmt.Errorf("ext4: inode %d: i_extra_isize %d too large", ino, le.Uint16(b[0x80:]))
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
		lo, ex := ext4spec.EncodeTime(n.o.Time)
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
	ext4spec.SetInodeChecksum(b, n.fsSeed, ino)
	return true, nil
}
