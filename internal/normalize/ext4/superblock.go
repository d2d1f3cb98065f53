package ext4

import (
	"bytes"
	"encoding/binary"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// superblocks normalises the primary superblock, then rewrites every
// sparse_super backup (superblock and descriptor table) from the primary,
// as the writer and e2fsprogs do, since the kernel only maintains the primary.
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
	// Lifetime KiB written is pure history; use what the writer writes: the KiB
	// of blocks in use.
	set("s_kbytes_written", 0x178, u64((n.blocks-freeBlocks)*(ext4spec.BlockSize/1024)))
	if len(fields) > 0 {
		ext4spec.SetSuperChecksum(sb)
		if err := n.writeAt(sb, 1024); err != nil {
			return err
		}
	}

	backup := bytes.Clone(sb)
	gdt := make([]byte, len(n.gdt))
	cur := make([]byte, 1024)
	sbChanged, gdtChanged := false, false
	for grp := uint32(1); grp < n.groups; grp++ {
		if !ext4spec.HasSuperBackup(grp) {
			continue
		}
		at := int64(grp) * int64(n.bpg) * ext4spec.BlockSize
		le.PutUint16(backup[0x5A:], uint16(grp))
		ext4spec.SetSuperChecksum(backup)
		if err := n.readAt(cur, at); err != nil {
			return err
		}
		if !bytes.Equal(cur, backup) {
			if err := n.writeAt(backup, at); err != nil {
				return err
			}
			sbChanged = true
		}
		if err := n.readAt(gdt, at+ext4spec.BlockSize); err != nil {
			return err
		}
		if !bytes.Equal(gdt, n.gdt) {
			if err := n.writeAt(n.gdt, at+ext4spec.BlockSize); err != nil {
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
