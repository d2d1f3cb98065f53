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
			return fmt.Errorf("ext4: normalize: directory inode %d is not extent-mapped", ino)
		}
		return nil // fast symlink, device, or block-mapped file: no seeded blocks
	}
	size := uint64(le.Uint32(in[0x04:])) | uint64(le.Uint32(in[0x6C:]))<<32
	onNode := func(pblk uint64, b []byte) (bool, error) {
		tail := 12 + 12*int(le.Uint16(b[4:]))
		if tail+4 > ext4spec.BlockSize {
			return false, fmt.Errorf("ext4: normalize: inode %d: extent block %d has eh_max %d", ino, pblk, le.Uint16(b[4:]))
		}
		if ext4spec.CRC32C(oldSeed, b[:tail]) != le.Uint32(b[tail:]) {
			return false, fmt.Errorf("ext4: normalize: inode %d: extent block %d checksum mismatch", ino, pblk)
		}
		le.PutUint32(b[tail:], ext4spec.CRC32C(newSeed, b[:tail]))
		n.rep.BlocksResealed++
		return true, nil
	}
	var onLeaf func(lblk uint32, pblk uint64, cnt uint32, unwritten bool) error
	if isDir {
		indexed := flags&ext4spec.FlagIndex != 0
		onLeaf = func(lblk uint32, pblk uint64, cnt uint32, unwritten bool) error {
			if unwritten {
				return nil
			}
			for i := uint32(0); i < cnt; i++ {
				if uint64(lblk+i)*ext4spec.BlockSize >= size {
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
	onLeaf func(lblk uint32, pblk uint64, cnt uint32, unwritten bool) error) ([]ext4spec.Extent, error) {
	le := binary.LittleEndian
	var out []ext4spec.Extent
	var walk func(b []byte, depth int) error
	walk = func(b []byte, depth int) error {
		if le.Uint16(b[0:]) != ext4spec.ExtentMagic {
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
				unwritten := cnt > ext4spec.MaxExtentLen
				if unwritten {
					cnt -= ext4spec.MaxExtentLen
				}
				p := uint64(le.Uint32(e[8:])) | uint64(le.Uint16(e[6:]))<<32
				if p+uint64(cnt) > n.blocks {
					return fmt.Errorf("ext4: normalize: inode %d: extent beyond the filesystem", ino)
				}
				out = append(out, ext4spec.Extent{Lblk: le.Uint32(e[0:]), Len: cnt, Pblk: p})
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
			cb := make([]byte, ext4spec.BlockSize)
			if err := n.readAt(cb, int64(child)*ext4spec.BlockSize); err != nil {
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
					if err := n.writeAt(cb, int64(child)*ext4spec.BlockSize); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	if le.Uint16(root[0:]) != ext4spec.ExtentMagic {
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
	if err := n.readAt(b, int64(pblk)*ext4spec.BlockSize); err != nil {
		return err
	}
	t := b[ext4spec.DirLeafSpace:]
	// htree blocks first: the kernel turns a leaf into the root in place, so
	// the root can still end in what looks like a leaf's tail (it is the
	// dx_tail's reserved word). Interior nodes start with an empty dirent
	// spanning the block, which a checksummed leaf never has.
	dx := indexed && (lblk == 0 || le.Uint32(b[0:]) == 0 && le.Uint16(b[4:]) == ext4spec.BlockSize)
	switch {
	case dx:
		at := 0x08 // interior node: a fake empty dirent, then count/limit
		if lblk == 0 {
			at = 0x18 + int(b[0x18+5]) // root: "." and "..", then dx_root_info
		}
		limit, count := int(le.Uint16(b[at:])), int(le.Uint16(b[at+2:]))
		tail := at + 8*limit
		if count > limit || tail+8 > ext4spec.BlockSize {
			return fmt.Errorf("ext4: normalize: directory %d block %d: not a checksummed htree block", ino, lblk)
		}
		if ext4spec.DxTailChecksum(oldSeed, b, at, count, limit) != le.Uint32(b[tail+4:]) {
			return fmt.Errorf("ext4: normalize: directory %d htree block %d checksum mismatch", ino, lblk)
		}
		le.PutUint32(b[tail+4:], ext4spec.DxTailChecksum(newSeed, b, at, count, limit))
	case le.Uint32(t[0:]) == 0 && le.Uint16(t[4:]) == 12 && t[6] == 0 && t[7] == ext4spec.DirTailFileType:
		if ext4spec.CRC32C(oldSeed, b[:ext4spec.DirLeafSpace]) != le.Uint32(t[8:]) {
			return fmt.Errorf("ext4: normalize: directory %d block %d checksum mismatch", ino, lblk)
		}
		le.PutUint32(t[8:], ext4spec.CRC32C(newSeed, b[:ext4spec.DirLeafSpace]))
	default:
		return fmt.Errorf("ext4: normalize: directory %d block %d has no checksum tail", ino, lblk)
	}
	n.rep.BlocksResealed++
	return n.writeAt(b, int64(pblk)*ext4spec.BlockSize)
}
