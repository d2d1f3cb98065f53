package ext4

import (
	"encoding/binary"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// reseal re-checksums the blocks whose checksum is seeded with the inode's
// generation: extent-tree blocks and, for a directory, its leaf and htree
// blocks. Each is verified against the old seed first, so a block that is
// not what we think it is stops Normalize instead of being "fixed".
func (n *normalizer) reseal(ino uint32, in []byte, oldSeed, newSeed uint32) error {
	le := binary.LittleEndian
	flags := le.Uint32(in[0x20:])
	mode := le.Uint16(in[0x00:])
	isDir := mode&ext4spec.ModeTypeMask == ext4spec.ModeDir
	if flags&ext4spec.FlagExtents == 0 {
		if isDir && le.Uint32(in[0x1C:]) != 0 {
			return fmt.Errorf("ext4: directory inode %d is not extent-mapped", ino)
		}
		return nil // fast symlink, device, or block-mapped file: no seeded blocks
	}
	size := uint64(le.Uint32(in[0x04:])) | uint64(le.Uint32(in[0x6C:]))<<32
	// The tree blocks' checksums were verified with oldSeed by walkExtents.
	onNode := func(pblk uint64, b []byte) (bool, error) {
		tail := 12 + 12*int(le.Uint16(b[4:]))
		le.PutUint32(b[tail:], ext4spec.CRC32C(newSeed, b[:tail]))
		n.rep.BlocksResealed++
		return true, nil
	}
	onLeaf := func(extent) error { return nil }
	if isDir {
		indexed := flags&ext4spec.FlagIndex != 0
		onLeaf = func(e extent) error {
			if e.Unwritten {
				return nil
			}
			for i := uint32(0); i < e.Len; i++ {
				if uint64(e.Lblk+i)*ext4spec.BlockSize >= size {
					break
				}
				// Each directory block belongs to one directory: one
				// claimed twice is refused, so a pass reads it once.
				pblk := e.Pblk + uint64(i)
				if n.seen[pblk] || n.isMeta(pblk, 1) {
					return fmt.Errorf("ext4: directory %d: block %d reached twice or is filesystem metadata", ino, pblk)
				}
				n.seen[pblk] = true
				if err := n.resealDirBlock(ino, e.Lblk+i, pblk, indexed, oldSeed, newSeed); err != nil {
					return err
				}
			}
			return nil
		}
	}
	return n.walkExtents(ino, in[0x28:0x64], oldSeed, n.seen, onNode, onLeaf)
}

// resealDirBlock re-checksums one directory block: a leaf (checksum in the
// fake dirent at its end) or an htree root/node (checksum in the dx_tail
// after the entries).
func (n *normalizer) resealDirBlock(ino, lblk uint32, pblk uint64, indexed bool, oldSeed, newSeed uint32) error {
	b := n.blk
	if err := n.readBlock(b, pblk); err != nil {
		return err
	}
	db, err := parseDirBlock(b, indexed && lblk == 0, indexed)
	if err != nil {
		return fmt.Errorf("ext4: directory %d block %d: %w", ino, lblk, err)
	}
	if db.sum(oldSeed, b) != db.stored(b) {
		return fmt.Errorf("ext4: directory %d block %d checksum mismatch", ino, lblk)
	}
	db.set(newSeed, b)
	n.rep.BlocksResealed++
	return n.writeAt(b, int64(pblk)*ext4spec.BlockSize)
}
