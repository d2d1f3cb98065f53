// Package gptspec is the on-disk definitions of MBR and GPT partition tables
// that the layout writer (internal/disk) and the partition normaliser
// (internal/normalize/partition) share, after UEFI 2.10, sections 5.2 and 5.3.
package gptspec

import (
	"bytes"
	"encoding/hex"
	"hash/crc32"
	"strings"
)

// SectorSize is the only sector size either side handles.
const SectorSize = 512

// Sector 0: the MBR, protective or not. Multi-byte fields are
// little-endian.
const (
	MBRSignatureOffset = 440 // uint32 disk signature, then two reserved bytes
	MBREntriesOffset   = 446 // four entries of MBREntrySize bytes
	MBREntrySize       = 16
	MBRBootSigOffset   = 510 // 0x55, 0xAA

	// Fields of an MBR entry.
	MBREntryStatus   = 0 // 0x80 bootable, 0x00 not; anything else is no partition table
	MBREntryType     = 4
	MBREntryStartLBA = 8  // uint32
	MBREntrySectors  = 12 // uint32

	// MBRTypeGPTProtector marks the entry of a protective (or hybrid) MBR
	// that covers the GPT.
	MBRTypeGPTProtector byte = 0xEE
)

// GPT header (at LBA 1, and its backup at the last sector) and partition
// entry field offsets. Multi-byte fields are little-endian.
const (
	GPTSignature = "EFI PART" // the header's first 8 bytes

	GPTHdrSize        = 12 // uint32: bytes covered by the header CRC
	GPTHdrCRC         = 16 // uint32
	GPTHdrMyLBA       = 24 // uint64
	GPTHdrAltLBA      = 32 // uint64: the other header's LBA
	GPTHdrFirstUsable = 40 // uint64
	GPTHdrLastUsable  = 48 // uint64
	GPTHdrDiskGUID    = 56 // 16 bytes, GUIDBytes order
	GPTHdrEntriesLBA  = 72 // uint64
	GPTHdrNumEntries  = 80 // uint32
	GPTHdrEntrySize   = 84 // uint32
	GPTHdrEntriesCRC  = 88 // uint32: CRC32 of the whole entry array
	GPTHdrMinSize     = 92 // the smallest header size the spec allows

	GPTEntryTypeGUID = 0  // 16 bytes; all zero marks an unused entry
	GPTEntryGUID     = 16 // 16 bytes: the unique partition GUID
	GPTEntryFirstLBA = 32 // uint64
	GPTEntryLastLBA  = 40 // uint64, inclusive
)

// HeaderCRC is the CRC32 of a GPT header's first size bytes with the CRC
// field taken as zero.
func HeaderCRC(hdr []byte, size uint32) uint32 {
	h := bytes.Clone(hdr[:size])
	clear(h[GPTHdrCRC : GPTHdrCRC+4])
	return crc32.ChecksumIEEE(h)
}

// GUIDBytes converts an RFC 4122 UUID to GPT's on-disk order, where the
// first three fields are little-endian (the mixed-endian GUID layout).
func GUIDBytes(u [16]byte) [16]byte {
	return [16]byte{u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6],
		u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]}
}

// FormatGUID writes an RFC 4122 UUID in the 8-4-4-4-12 form, upper case as
// sgdisk prints GUIDs.
func FormatGUID(u [16]byte) string {
	h := strings.ToUpper(hex.EncodeToString(u[:]))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
