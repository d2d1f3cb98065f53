// Package ext4spec holds the on-disk definitions of ext4 that the writer and
// the normaliser share: field offsets, feature bits, sizes, checksums.
package ext4spec

import "encoding/binary"

// The one layout the writer makes and the normaliser accepts.
const (
	BlockSize      = 4096
	InodeSize      = 256
	InodesPerBlock = BlockSize / InodeSize
	DescSize       = 64             // 64bit group descriptors
	DirLeafSpace   = BlockSize - 12 // room in a directory leaf before its checksum tail
)

// Superblock values.
const (
	SuperMagic = 0xEF53

	StateValid  = 0x1 // s_state: cleanly unmounted
	StateErrors = 0x2 // s_state: errors detected

	CompatHasJournal   = 0x4
	CompatExtAttr      = 0x8
	CompatDirIndex     = 0x20
	CompatSparseSuper2 = 0x200

	IncompatFiletype = 0x2
	IncompatRecover  = 0x4
	IncompatExtents  = 0x40
	Incompat64bit    = 0x80
	IncompatFlexBg   = 0x200
	IncompatCsumSeed = 0x2000
	IncompatLargeDir = 0x4000

	RoCompatSparse     = 0x1
	RoCompatLargeFile  = 0x2
	RoCompatHugeFile   = 0x8
	RoCompatDirNlink   = 0x20
	RoCompatExtraIsize = 0x40
	RoCompatBigalloc   = 0x200
	RoCompatMetaCsum   = 0x400
)

// Group descriptor flags (bg_flags).
const (
	BgInodeUninit      = 0x1
	BgInodeTableZeroed = 0x4
)

// Inode values.
const (
	JournalIno = 8

	ModeTypeMask = 0xF000 // i_mode file type bits
	ModeRegular  = 0x8000
	ModeDir      = 0x4000
	ModeSymlink  = 0xA000

	FlagIndex   = 0x1000 // htree-indexed directory
	FlagExtents = 0x80000
)

// Extent trees and directory blocks.
const (
	ExtentMagic  = 0xF30A
	MaxExtentLen = 32768 // longest initialised extent; longer ee_len means unwritten

	DirTailFileType = 0xDE // file type of the fake dirent holding a leaf's checksum
)

// Extent maps Len blocks from logical block Lblk to physical block Pblk.
type Extent struct {
	Lblk uint32
	Len  uint32
	Pblk uint64
}

// EncodeTime splits seconds into the 32-bit time field and the epoch bits
// of its *_extra field, so times past 2038 (and before 1970) survive.
func EncodeTime(t int64) (lo, extra uint32) {
	return uint32(t), uint32((t-int64(int32(t)))>>32) & 3
}

// HasSuperBackup reports whether sparse_super keeps a superblock copy in
// group g: groups 0 and 1 and the powers of 3, 5 and 7.
func HasSuperBackup(g uint32) bool {
	if g <= 1 {
		return true
	}
	for _, b := range []uint32{3, 5, 7} {
		n := b
		for n < g {
			n *= b
		}
		if n == g {
			return true
		}
	}
	return false
}

// JournalMagic starts a JBD2 journal superblock.
const JournalMagic = 0xC03B3998

// PutEmptyJournalSuper fills b (one block) with the superblock of an empty
// JBD2 journal of n blocks: what the writer writes and the normaliser resets
// a used journal to. The kernel sets its features again on mount.
func PutEmptyJournalSuper(b []byte, n uint64, uuid []byte) {
	clear(b)
	be := binary.BigEndian
	be.PutUint32(b[0x00:], JournalMagic)
	be.PutUint32(b[0x04:], 4) // superblock v2
	be.PutUint32(b[0x0C:], BlockSize)
	be.PutUint32(b[0x10:], uint32(n)) // s_maxlen
	be.PutUint32(b[0x14:], 1)         // s_first
	be.PutUint32(b[0x18:], 1)         // s_sequence
	copy(b[0x30:0x40], uuid)
	be.PutUint32(b[0x40:], 1) // s_nr_users
}
