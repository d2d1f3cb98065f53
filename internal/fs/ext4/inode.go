package ext4

import (
	"encoding/binary"
	"io/fs"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

const (
	ftReg     = 1
	ftDir     = 2
	ftSymlink = 7

	linkMax = 65000 // dir_nlink: directories above this report 1
)

// inodeInfo is what the writer knows about an inode when it writes it.
type inodeInfo struct {
	mode   uint16 // type | permission bits
	uid    uint32
	gid    uint32
	size   uint64
	links  uint16
	blocks uint64 // 4 KiB blocks, data + extent tree
	flags  uint32
	iblock [60]byte
	time   int64
}

// unixMode is the st_mode permission and special bits of m.
func unixMode(m fs.FileMode) uint16 { return uint16(unixmode.Perm(m)) }

func inodeSeed(fsSeed, ino uint32) uint32 {
	return ext4spec.InodeSeed(fsSeed, ino, 0) // generation is always 0
}

// encodeInode fills b (256 bytes) and sets its checksum.
func encodeInode(b []byte, fsSeed, ino uint32, in *inodeInfo) {
	clear(b[:ext4spec.InodeSize])
	le := binary.LittleEndian
	t, tx := ext4spec.EncodeTime(in.time)
	sectors := in.blocks * (ext4spec.BlockSize / 512)
	le.PutUint16(b[0x00:], in.mode)
	le.PutUint16(b[0x02:], uint16(in.uid))
	le.PutUint32(b[0x04:], uint32(in.size))
	le.PutUint32(b[0x08:], t) // atime
	le.PutUint32(b[0x0C:], t) // ctime
	le.PutUint32(b[0x10:], t) // mtime
	le.PutUint16(b[0x18:], uint16(in.gid))
	le.PutUint16(b[0x1A:], in.links)
	le.PutUint32(b[0x1C:], uint32(sectors))
	le.PutUint32(b[0x20:], in.flags)
	copy(b[0x28:0x64], in.iblock[:])
	le.PutUint32(b[0x6C:], uint32(in.size>>32))
	le.PutUint16(b[0x74:], uint16(sectors>>32))
	le.PutUint16(b[0x78:], uint16(in.uid>>16))
	le.PutUint16(b[0x7A:], uint16(in.gid>>16))
	le.PutUint16(b[0x80:], extraIsize)
	le.PutUint32(b[0x84:], tx) // ctime_extra
	le.PutUint32(b[0x88:], tx) // mtime_extra
	le.PutUint32(b[0x8C:], tx) // atime_extra
	le.PutUint32(b[0x90:], t)  // crtime
	le.PutUint32(b[0x94:], tx)
	ext4spec.SetInodeChecksum(b, fsSeed, ino)
}
