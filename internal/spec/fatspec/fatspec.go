// Package fatspec is the on-disk layout of FAT32 that our writer
// (internal/fs/fat) and our normaliser (internal/normalize/fat) share: the
// boot sector, FSInfo and directory entry fields, FAT entry values and the
// timestamp encoding, after Microsoft's FAT specification (2005).
package fatspec

import (
	"encoding/binary"
	"time"
)

// SectorSize is the smallest sector FAT allows, and the one the Writer
// uses: every boot sector field lies in the first SectorSize bytes.
const SectorSize = 512

// Boot sector and BPB field offsets. Multi-byte fields are little-endian.
const (
	BootJump              = 0  // 3 bytes: jump to the boot code
	BootOEMName           = 3  // 8 bytes
	BootBytesPerSector    = 11 // uint16
	BootSectorsPerCluster = 13 // byte
	BootReservedSectors   = 14 // uint16: sectors before the first FAT
	BootNumFATs           = 16 // byte
	BootRootEntries       = 17 // uint16: FAT12/16's fixed root directory; 0 on FAT32
	BootTotalSectors16    = 19 // uint16: 0 on FAT32
	BootMedia             = 21 // byte
	BootFATSize16         = 22 // uint16: 0 on FAT32
	BootSectorsPerTrack   = 24 // uint16: CHS geometry
	BootHeads             = 26 // uint16: CHS geometry
	BootHiddenSectors     = 28 // uint32: sectors before the filesystem on its disk
	BootTotalSectors32    = 32 // uint32
	BootFATSize32         = 36 // uint32: sectors per FAT
	BootExtFlags          = 40 // uint16: 0 = FATs mirrored
	BootVersion           = 42 // uint16: only 0 is defined
	BootRootCluster       = 44 // uint32
	BootFSInfoSector      = 48 // uint16: 0 or 0xFFFF for none
	BootBackupSector      = 50 // uint16: 0 or 0xFFFF for none
	BootFSType16          = 54 // 8 bytes: FAT12/16's file system type (in FAT32's reserved bytes)
	BootDriveNumber       = 64 // byte
	BootDirtyFlags        = 65 // byte: "reserved", where FAT drivers mark a mounted volume (DirtyBits)
	BootExtSignature      = 66 // byte: 0x29 when the next three fields are valid
	BootVolumeID          = 67 // uint32
	BootVolumeLabel       = 71 // 11 bytes
	BootFSType            = 82 // 8 bytes: "FAT32   "
	BootCode              = 90
	BootSignature         = 510 // 0x55, 0xAA
)

// DirtyBits are the bits of BootDirtyFlags that drivers set while the
// volume is mounted: Linux bit 0, Windows bit 1 too.
const DirtyBits = 0x03

// SetBootSignature puts the 0x55AA signature at the end of the boot sector b.
func SetBootSignature(b []byte) { b[BootSignature], b[BootSignature+1] = 0x55, 0xAA }

// HasBootSignature reports whether boot sector b ends in 0x55AA.
func HasBootSignature(b []byte) bool { return b[BootSignature] == 0x55 && b[BootSignature+1] == 0xAA }

// FSInfo sector field offsets: the free cluster count and the next-free
// hint, each FSInfoUnknown when not known.
const (
	FSInfoFreeCount = 488 // uint32
	FSInfoNextFree  = 492 // uint32
	FSInfoUnknown   = 0xFFFFFFFF

	fsInfoLeadSig   = 0
	fsInfoStructSig = 484
	fsInfoTrailSig  = 508
)

// SetFSInfoSignatures puts FSInfo's three signatures into sector b.
func SetFSInfoSignatures(b []byte) {
	binary.LittleEndian.PutUint32(b[fsInfoLeadSig:], 0x41615252)
	binary.LittleEndian.PutUint32(b[fsInfoStructSig:], 0x61417272)
	binary.LittleEndian.PutUint32(b[fsInfoTrailSig:], 0xAA550000)
}

// HasFSInfoSignatures reports whether sector b carries FSInfo's three
// signatures.
func HasFSInfoSignatures(b []byte) bool {
	le := binary.LittleEndian
	return le.Uint32(b[fsInfoLeadSig:]) == 0x41615252 && le.Uint32(b[fsInfoStructSig:]) == 0x61417272 &&
		le.Uint32(b[fsInfoTrailSig:]) == 0xAA550000
}

// FAT32 entry values: 32 bits, of which the low 28 hold the value.
const (
	EntryMask     = 0x0FFFFFFF
	MaxClusters   = 0x0FFFFFF5 // cluster numbers from 0x0FFFFFF7 up are reserved
	BadCluster    = 0x0FFFFFF7
	EndOfChainMin = 0x0FFFFFF8 // this value and above end a chain
	EndOfChain    = 0x0FFFFFFF // the end-of-chain value a writer puts
	// CleanBits in FAT[1]: clean shutdown (bit 27) and no hard error (bit
	// 26); Windows clears them while the volume is mounted.
	CleanBits = 0x0C000000
)

// Directory entries: 32 bytes each, and at most 65536 in a directory.
const (
	DirEntrySize = 32
	MaxDirSize   = 65536 * DirEntrySize

	DirFreeMarker = 0xE5 // first name byte of a deleted entry; 0x00 ends the directory

	// Short (8.3) entry field offsets.
	DirName        = 0  // 11 bytes: base name and extension, space padded
	DirAttr        = 11 // byte
	DirCreateTenth = 13 // byte: 10 ms units, keeping an odd second
	DirCreateTime  = 14 // uint16
	DirCreateDate  = 16 // uint16
	DirAccessDate  = 18 // uint16
	DirClusterHigh = 20 // uint16: high half of the first cluster
	DirWriteTime   = 22 // uint16
	DirWriteDate   = 24 // uint16
	DirClusterLow  = 26 // uint16: low half of the first cluster
	DirFileSize    = 28 // uint32
)

// Directory entry attributes.
const (
	AttrReadOnly     = 0x01
	AttrVolumeID     = 0x08
	AttrDir          = 0x10
	AttrArchive      = 0x20 // set on new files by every FAT driver
	AttrLongName     = 0x0F // read-only, hidden, system and volume ID: a long-name piece
	AttrLongNameMask = 0x3F // the bits that tell a long-name piece
)

// FirstCluster returns a short entry's first cluster.
func FirstCluster(e []byte) uint32 {
	le := binary.LittleEndian
	return uint32(le.Uint16(e[DirClusterHigh:]))<<16 | uint32(le.Uint16(e[DirClusterLow:]))
}

// PutFirstCluster sets a short entry's first cluster.
func PutFirstCluster(e []byte, c uint32) {
	le := binary.LittleEndian
	le.PutUint16(e[DirClusterHigh:], uint16(c>>16))
	le.PutUint16(e[DirClusterLow:], uint16(c))
}

// Time is a timestamp as a directory entry stores it: a date, a time of
// day in 2-second steps, and (creation only) the odd second in 10 ms units.
type Time struct {
	Date, TimeOfDay uint16
	Tenth           byte
}

var (
	epoch = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	last  = time.Date(2107, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
)

// EncodeTime encodes unix seconds in UTC, clamped to FAT's range
// 1980-01-01 .. 2107-12-31.
func EncodeTime(unix int64) Time {
	tm := time.Unix(min(max(unix, epoch), last), 0).UTC()
	return Time{
		Date:      uint16(tm.Year()-1980)<<9 | uint16(tm.Month())<<5 | uint16(tm.Day()),
		TimeOfDay: uint16(tm.Hour())<<11 | uint16(tm.Minute())<<5 | uint16(tm.Second()/2),
		Tenth:     byte(tm.Second()%2) * 100,
	}
}

// PutTimes sets all of a short entry's times to tm: creation, last access
// (a date only) and last write.
func PutTimes(e []byte, tm Time) {
	le := binary.LittleEndian
	e[DirCreateTenth] = tm.Tenth
	le.PutUint16(e[DirCreateTime:], tm.TimeOfDay)
	le.PutUint16(e[DirCreateDate:], tm.Date)
	le.PutUint16(e[DirAccessDate:], tm.Date)
	le.PutUint16(e[DirWriteTime:], tm.TimeOfDay)
	le.PutUint16(e[DirWriteDate:], tm.Date)
}
