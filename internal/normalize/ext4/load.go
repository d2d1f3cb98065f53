package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// load reads and validates the superblock and group descriptors.
func (n *normalizer) load() error {
	le := binary.LittleEndian
	sb := make([]byte, 1024)
	if err := n.readAt(sb, 1024); err != nil {
		return err
	}
	if le.Uint16(sb[0x38:]) != ext4spec.SuperMagic {
		return fmt.Errorf("ext4: normalize: %s at offset %d is not an ext2/3/4 filesystem (no superblock magic)", n.f.Name(), n.off)
	}
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
		return fmt.Errorf("ext4: normalize: not an ext4 filesystem of this writer's layout: lacks %v", missing)
	}
	if got := ext4spec.SuperChecksum(sb); got != le.Uint32(sb[0x3FC:]) {
		return fmt.Errorf("ext4: normalize: superblock checksum mismatch (%#x, computed %#x)", le.Uint32(sb[0x3FC:]), got)
	}
	// Any other incompat feature means a layout Normalize was not written for.
	known := uint32(ext4spec.IncompatFiletype | ext4spec.IncompatRecover | ext4spec.IncompatExtents |
		ext4spec.Incompat64bit | ext4spec.IncompatFlexBg | ext4spec.IncompatCsumSeed | ext4spec.IncompatLargeDir)
	if x := incompat &^ known; x != 0 {
		return fmt.Errorf("ext4: normalize: unsupported incompatible features %#x", x)
	}
	if ro&ext4spec.RoCompatBigalloc != 0 {
		return errors.New("ext4: normalize: bigalloc is not supported")
	}
	// Refusals for a filesystem still in use or damaged: normalising would
	// bake a half-written state into the image.
	state := le.Uint16(sb[0x3A:])
	switch {
	case incompat&ext4spec.IncompatRecover != 0:
		return errors.New("ext4: normalize: filesystem was not cleanly unmounted (needs_recovery set: journal must be replayed first)")
	case state&ext4spec.StateValid == 0:
		return errors.New("ext4: normalize: filesystem was not cleanly unmounted (state not clean)")
	case state&ext4spec.StateErrors != 0:
		return errors.New("ext4: normalize: filesystem has errors (state: with errors); run e2fsck first")
	case le.Uint32(sb[0xE8:]) != 0:
		return fmt.Errorf("ext4: normalize: orphan list is not empty (s_last_orphan %d)", le.Uint32(sb[0xE8:]))
	}
	n.sb = sb
	n.fsSeed = ext4spec.ChecksumSeed(sb[0x68:0x78])
	if incompat&ext4spec.IncompatCsumSeed != 0 {
		n.fsSeed = le.Uint32(sb[0x270:])
	}
	n.blocks = uint64(le.Uint32(sb[0x04:])) | uint64(le.Uint32(sb[0x150:]))<<32
	n.bpg = le.Uint32(sb[0x20:])
	n.ipg = le.Uint32(sb[0x28:])
	if n.bpg == 0 || n.bpg > ext4spec.BlockSize*8 || n.ipg == 0 || n.ipg > ext4spec.BlockSize*8 || n.ipg%ext4spec.InodesPerBlock != 0 {
		return fmt.Errorf("ext4: normalize: implausible geometry (%d blocks, %d inodes per group)", n.bpg, n.ipg)
	}
	n.groups = uint32((n.blocks + uint64(n.bpg) - 1) / uint64(n.bpg))
	if uint64(n.groups)*uint64(n.ipg) != uint64(le.Uint32(sb[0x00:])) {
		return fmt.Errorf("ext4: normalize: inode count %d is not %d groups x %d", le.Uint32(sb[0x00:]), n.groups, n.ipg)
	}
	if st, err := n.f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() < n.off+int64(n.blocks)*ext4spec.BlockSize {
		return fmt.Errorf("ext4: normalize: %s is %d bytes, the filesystem needs %d from offset %d", n.f.Name(), st.Size(), int64(n.blocks)*ext4spec.BlockSize, n.off)
	}
	n.gdtBlks = uint32((uint64(n.groups)*ext4spec.DescSize + ext4spec.BlockSize - 1) / ext4spec.BlockSize)
	n.gdt = make([]byte, int(n.gdtBlks)*ext4spec.BlockSize)
	if err := n.readAt(n.gdt, ext4spec.BlockSize); err != nil {
		return err
	}
	for grp := uint32(0); grp < n.groups; grp++ {
		d := n.desc(grp)
		if got := ext4spec.DescChecksum(n.fsSeed, grp, d); got != le.Uint16(d[0x1E:]) {
			return fmt.Errorf("ext4: normalize: group %d descriptor checksum mismatch", grp)
		}
	}
	return nil
}

func (n *normalizer) desc(grp uint32) []byte {
	return n.gdt[int(grp)*ext4spec.DescSize : int(grp+1)*ext4spec.DescSize]
}

func descU64(d []byte, lo, hi int) uint64 {
	return uint64(binary.LittleEndian.Uint32(d[lo:])) | uint64(binary.LittleEndian.Uint32(d[hi:]))<<32
}

func descU32(d []byte, lo, hi int) uint32 {
	return uint32(binary.LittleEndian.Uint16(d[lo:])) | uint32(binary.LittleEndian.Uint16(d[hi:]))<<16
}
