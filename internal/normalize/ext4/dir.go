package ext4

import (
	"encoding/binary"
	"errors"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// dirBlock says where a directory block keeps its checksum: a leaf in the
// fake dirent at its end, an htree root or node in the dx_tail after its
// count/limit header at b[at:] and limit entries.
type dirBlock struct {
	dx               bool
	at, count, limit int
}

// parseDirBlock finds b's checksum. htree blocks come first: the kernel
// turns a leaf into the root in place, so the root can still end in what
// looks like a leaf's tail (it is the dx_tail's reserved word). Interior
// nodes start with an empty dirent spanning the block, which a checksummed
// leaf never has.
func parseDirBlock(b []byte, root, indexed bool) (dirBlock, error) {
	le := binary.LittleEndian
	if root || indexed && le.Uint32(b[0:]) == 0 && le.Uint16(b[4:]) == ext4spec.BlockSize {
		at := 0x08 // interior node: a fake empty dirent, then count/limit
		if root {
			at = 0x18 + int(b[0x18+5]) // root: "." and "..", then dx_root_info
		}
		limit, count := int(le.Uint16(b[at:])), int(le.Uint16(b[at+2:]))
		if count > limit || at+8*limit+8 > ext4spec.BlockSize {
			return dirBlock{}, errors.New("not a checksummed htree block")
		}
		return dirBlock{dx: true, at: at, count: count, limit: limit}, nil
	}
	t := b[ext4spec.DirLeafSpace:]
	if le.Uint32(t[0:]) == 0 && le.Uint16(t[4:]) == 12 && t[6] == 0 && t[7] == ext4spec.DirTailFileType {
		return dirBlock{}, nil
	}
	return dirBlock{}, errors.New("no checksum tail")
}

func (d dirBlock) sum(seed uint32, b []byte) uint32 {
	if d.dx {
		return ext4spec.DxTailChecksum(seed, b, d.at, d.count, d.limit)
	}
	return ext4spec.CRC32C(seed, b[:ext4spec.DirLeafSpace])
}

func (d dirBlock) csumAt() int {
	if d.dx {
		return d.at + 8*d.limit + 4
	}
	return ext4spec.DirLeafSpace + 8
}

func (d dirBlock) stored(b []byte) uint32 { return binary.LittleEndian.Uint32(b[d.csumAt():]) }

func (d dirBlock) set(seed uint32, b []byte) {
	binary.LittleEndian.PutUint32(b[d.csumAt():], d.sum(seed, b))
}

// dirEntries calls fn for each in-use entry of a checksummed leaf block b,
// checking each record lies inside the leaf's space.
func dirEntries(b []byte, filetype bool, fn func(ino uint32, name []byte) error) error {
	le := binary.LittleEndian
	for pos := 0; pos < ext4spec.DirLeafSpace; {
		if pos+8 > ext4spec.DirLeafSpace {
			return errors.New("directory entry crosses the block's end")
		}
		ino, rec, nameLen := le.Uint32(b[pos:]), int(le.Uint16(b[pos+4:])), int(b[pos+6])
		if !filetype {
			nameLen = int(le.Uint16(b[pos+6:]))
		}
		if rec < 12 || rec%4 != 0 || rec > ext4spec.DirLeafSpace-pos || 8+nameLen > rec {
			return errors.New("corrupt directory entry")
		}
		if ino != 0 {
			if err := fn(ino, b[pos+8:pos+8+nameLen]); err != nil {
				return err
			}
		}
		pos += rec
	}
	return nil
}
