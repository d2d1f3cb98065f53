package ext4

import (
	"encoding/binary"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

const (
	// maxExtentDepth is the kernel's EXT4_MAX_EXTENT_DEPTH.
	maxExtentDepth = 5
	// maxFileExtents caps the mappings collected for one file (the
	// journal, a file read or rewritten): 1.5 MiB of them, a 256 MiB file
	// in 4 KiB pieces. Normalize's directory walk collects none.
	maxFileExtents = 1 << 16
	// Entries an extent node can hold: 4 in the inode, 340 in a block.
	rootMaxEntries  = 4
	blockMaxEntries = (ext4spec.BlockSize - 12) / 12
)

// extent maps Len blocks from logical block Lblk to physical block Pblk;
// an unwritten one (preallocated) reads as zeros.
type extent struct {
	Lblk      uint32
	Len       uint32
	Pblk      uint64
	Unwritten bool
}

// walkExtents visits the extent tree rooted in an inode's i_block (root),
// verifying each tree block's checksum with seed. seen holds the blocks
// already visited in this pass, by any inode: a tree block reached twice (a
// loop, or one shared by two inodes) is refused, so a pass reads each block
// at most once whatever the trees claim. The mappings come in logical
// order, non-overlapping, each inside the filesystem. onNode may modify a
// tree block after its subtree was visited (it is written back when it
// returns true); onLeaf gets every mapping.
func (v *volume) walkExtents(ino uint32, root []byte, seed uint32, seen map[uint64]bool,
	onNode func(pblk uint64, b []byte) (bool, error),
	onLeaf func(e extent) error) error {
	le := binary.LittleEndian
	next := uint64(0) // first logical block the next mapping may start at
	bad := func(what string, a ...any) error {
		return fmt.Errorf("ext4: inode %d: %s", ino, fmt.Sprintf(what, a...))
	}
	var walk func(b []byte, depth int, inInode bool) error
	walk = func(b []byte, depth int, inInode bool) error {
		limit := blockMaxEntries
		if inInode {
			limit = rootMaxEntries
		}
		if le.Uint16(b[0:]) != ext4spec.ExtentMagic {
			return bad("bad extent header")
		}
		entries, emax, d := int(le.Uint16(b[2:])), int(le.Uint16(b[4:])), int(le.Uint16(b[6:]))
		if d != depth || d > maxExtentDepth || emax > limit || entries > emax {
			return bad("corrupt extent tree node (depth %d of %d, %d of %d entries)", d, depth, entries, emax)
		}
		for i := 0; i < entries; i++ {
			e := b[12+12*i:]
			lblk := uint64(le.Uint32(e[0:]))
			if lblk < next {
				return bad("extent tree out of order at logical block %d", lblk)
			}
			if d == 0 {
				x := extent{Lblk: uint32(lblk), Len: uint32(le.Uint16(e[4:])), Pblk: uint64(le.Uint32(e[8:])) | uint64(le.Uint16(e[6:]))<<32}
				if x.Len > ext4spec.MaxExtentLen {
					x.Len -= ext4spec.MaxExtentLen
					x.Unwritten = true
				}
				if x.Len == 0 || !v.runOK(x.Pblk, uint64(x.Len)) || lblk+uint64(x.Len) > 1<<32 {
					return bad("extent %d+%d at block %d beyond the filesystem", lblk, x.Len, x.Pblk)
				}
				next = lblk + uint64(x.Len)
				if err := onLeaf(x); err != nil {
					return err
				}
				continue
			}
			next = lblk
			child := uint64(le.Uint32(e[4:])) | uint64(le.Uint16(e[8:]))<<32
			if child >= v.blocks {
				return bad("extent index %d beyond the filesystem", child)
			}
			if v.isMeta(child, 1) {
				return bad("extent tree block %d is filesystem metadata", child)
			}
			if seen[child] {
				return bad("extent tree block %d reached twice", child)
			}
			seen[child] = true
			cb := make([]byte, ext4spec.BlockSize)
			if err := v.readBlock(cb, child); err != nil {
				return err
			}
			tail := 12 + 12*int(le.Uint16(cb[4:]))
			if le.Uint16(cb[4:]) > blockMaxEntries {
				return bad("extent block %d has eh_max %d", child, le.Uint16(cb[4:]))
			}
			if ext4spec.CRC32C(seed, cb[:tail]) != le.Uint32(cb[tail:]) {
				return bad("extent block %d checksum mismatch", child)
			}
			if err := walk(cb, d-1, false); err != nil {
				return err
			}
			if onNode != nil {
				w, err := onNode(child, cb)
				if err != nil {
					return err
				}
				if w {
					if err := v.writeAt(cb, int64(child)*ext4spec.BlockSize); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	return walk(root, int(le.Uint16(root[6:])), true)
}

// fileExtents returns the mappings of an extent-mapped inode in b, at most
// maxFileExtents of them; seen gets its tree blocks.
func (v *volume) fileExtents(ino uint32, b []byte, seen map[uint64]bool) ([]extent, error) {
	le := binary.LittleEndian
	if le.Uint32(b[0x20:])&ext4spec.FlagExtents == 0 {
		return nil, fmt.Errorf("ext4: inode %d is not extent-mapped", ino)
	}
	var out []extent
	err := v.walkExtents(ino, b[0x28:0x64], v.seedFor(ino, le.Uint32(b[0x64:])), seen, nil, func(e extent) error {
		if len(out) == maxFileExtents {
			return fmt.Errorf("ext4: inode %d has more than %d extents", ino, maxFileExtents)
		}
		out = append(out, e)
		return nil
	})
	return out, err
}
