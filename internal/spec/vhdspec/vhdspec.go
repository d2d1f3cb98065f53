// Package vhdspec is the on-disk definition of the VHD footer that the
// Azure writer (internal/cloudimg/vhd) and the container normaliser
// (internal/normalize/container) share, after Microsoft's "Virtual Hard
// Disk Image Format Specification" ("Hard Disk Footer Format"). Fields are
// big-endian.
package vhdspec

const (
	Cookie     = "conectix"
	FooterSize = 512

	// Footer field offsets.
	OffFeatures   = 8
	OffVersion    = 12
	OffDataOffset = 16 // the dynamic header's offset; all ones for fixed disks
	OffTimestamp  = 24 // seconds since Epoch
	OffCreatorApp = 28
	OffCreatorVer = 32
	OffCreatorOS  = 36
	OffOrigSize   = 40
	OffCurSize    = 48
	OffGeometry   = 56 // cylinders (2 bytes), heads, sectors per track
	OffDiskType   = 60
	OffChecksum   = 64
	OffUniqueID   = 68

	DiskFixed   = 2
	DiskDynamic = 3

	// Epoch is the time base, 2000-01-01T00:00:00Z, in Unix seconds.
	Epoch = 946684800
)

// Checksum is the VHD checksum of a footer or dynamic disk header: the
// one's complement of its byte sum, leaving out the 4-byte checksum field
// at offset field.
func Checksum(b []byte, field int) uint32 {
	var s uint32
	for i, c := range b {
		if i < field || i >= field+4 {
			s += uint32(c)
		}
	}
	return ^s
}
