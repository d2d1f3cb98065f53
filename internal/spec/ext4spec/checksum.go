package ext4spec

import (
	"encoding/binary"
	"hash/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C is ext4's raw crc32c update: no pre/post inversion (the kernel's
// ext4_chksum returns the shash context as is).
func CRC32C(c uint32, p []byte) uint32 { return ^crc32.Update(^c, castagnoli, p) }

// CRC32CUint32 feeds v, little-endian, to CRC32C.
func CRC32CUint32(c uint32, v uint32) uint32 {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return CRC32C(c, b[:])
}

// ChecksumSeed is the filesystem's metadata checksum seed without
// csum_seed: the crc32c of its UUID.
func ChecksumSeed(uuid []byte) uint32 { return CRC32C(^uint32(0), uuid) }

// SuperChecksum is the checksum of a 1024-byte superblock, stored in its
// last 4 bytes (s_checksum).
func SuperChecksum(sb []byte) uint32 { return CRC32C(^uint32(0), sb[:0x3FC]) }

// SetSuperChecksum stores sb's checksum.
func SetSuperChecksum(sb []byte) { binary.LittleEndian.PutUint32(sb[0x3FC:], SuperChecksum(sb)) }

// DescChecksum is the checksum of group grp's descriptor d (bg_checksum at
// 0x1E, itself left out).
func DescChecksum(fsSeed, grp uint32, d []byte) uint16 {
	c := CRC32CUint32(fsSeed, grp)
	c = CRC32C(c, d[:0x1E])
	c = CRC32C(c, []byte{0, 0})
	return uint16(CRC32C(c, d[0x20:DescSize]))
}

// InodeSeed seeds the checksums of inode ino and of the blocks it owns
// (extent tree, directory blocks): it includes the inode's generation.
func InodeSeed(fsSeed, ino, gen uint32) uint32 {
	return CRC32CUint32(CRC32CUint32(fsSeed, ino), gen)
}

// InodeChecksum is the checksum of inode ino (b, InodeSize bytes) as the
// kernel computes it: crc32c seeded with the inode's own generation, over
// the inode with its checksum fields as zero, only the low 16 bits when the
// inode has no i_checksum_hi (i_extra_isize < 4). b is not changed.
func InodeChecksum(b []byte, fsSeed, ino uint32) uint32 {
	le := binary.LittleEndian
	var c [InodeSize]byte
	copy(c[:], b)
	le.PutUint16(c[0x7C:], 0)
	hasHi := le.Uint16(c[0x80:]) >= 4
	if hasHi {
		le.PutUint16(c[0x82:], 0)
	}
	sum := CRC32C(InodeSeed(fsSeed, ino, le.Uint32(c[0x64:])), c[:])
	if !hasHi {
		sum &= 0xFFFF
	}
	return sum
}

// StoredInodeChecksum is the checksum b (InodeSize bytes) records.
func StoredInodeChecksum(b []byte) uint32 {
	le := binary.LittleEndian
	sum := uint32(le.Uint16(b[0x7C:]))
	if le.Uint16(b[0x80:]) >= 4 {
		sum |= uint32(le.Uint16(b[0x82:])) << 16
	}
	return sum
}

// SetInodeChecksum stores InodeChecksum in b. Both sides store inodes of
// generation 0 only, the only generation either writes.
func SetInodeChecksum(b []byte, fsSeed, ino uint32) {
	le := binary.LittleEndian
	sum := InodeChecksum(b, fsSeed, ino)
	le.PutUint16(b[0x7C:], uint16(sum))
	if le.Uint16(b[0x80:]) >= 4 {
		le.PutUint16(b[0x82:], uint16(sum>>16))
	}
}

// DxTailChecksum is the checksum in the dx_tail of an htree block whose
// count/limit header is at b[at:]: it covers the block up to the last used
// entry, then the tail with the checksum field as zero.
func DxTailChecksum(seed uint32, b []byte, at, count, limit int) uint32 {
	tail := at + 8*limit
	c := CRC32C(seed, b[:at+8*count])
	c = CRC32C(c, b[tail:tail+4])
	return CRC32C(c, []byte{0, 0, 0, 0})
}
