// Package vhd turns a raw disk image into a fixed VHD as Azure takes it: the
// raw data, grown to a whole number of MiB, then a 512-byte footer.
//
// Azure's rules (its "Prepare a Linux VHD" pages): a fixed, not dynamic,
// VHD; a virtual size that is a whole number of MiB; the footer's cookie
// "conectix". The footer written here is the one qemu-img writes with
// `-O vpc -o subformat=fixed,force_size=on`: creator "qem2", whose current
// size is the exact size, not one rounded to a CHS geometry (plain `vpc`
// rounds, which Azure refuses).
package vhd

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/vhdspec"
)

const (
	// FooterSize is the footer's size, at the very end of the file.
	FooterSize = vhdspec.FooterSize
	// Align is the unit Azure wants the virtual size in.
	Align = 1 << 20
	// MinSize is the smallest virtual size Azure accepts.
	MinSize = 20 << 20
	// MaxSize is the largest a VHD can describe (2040 GiB, the format's
	// limit; Azure's OS disks stop at 2 TiB).
	MaxSize = 2040 << 30
)

// Size is the virtual size a raw image of n bytes gets: n rounded up to a
// whole MiB, at least MinSize.
func Size(n int64) int64 {
	return max((n+Align-1)/Align*Align, MinSize)
}

// Footer returns the fixed-disk footer of a disk of size bytes.
func Footer(size int64, id [16]byte, unix int64) []byte {
	f := make([]byte, FooterSize)
	be := binary.BigEndian
	copy(f, vhdspec.Cookie)
	be.PutUint32(f[vhdspec.OffFeatures:], 2) // "reserved", always set
	be.PutUint32(f[vhdspec.OffVersion:], 0x00010000)
	be.PutUint64(f[vhdspec.OffDataOffset:], ^uint64(0)) // fixed: no dynamic header
	be.PutUint32(f[vhdspec.OffTimestamp:], uint32(min(max(unix-vhdspec.Epoch, 0), 1<<32-1)))
	copy(f[vhdspec.OffCreatorApp:], "qem2") // qemu's mark for "current size is exact"
	be.PutUint32(f[vhdspec.OffCreatorVer:], 0x00050003)
	copy(f[vhdspec.OffCreatorOS:], "Wi2k")
	be.PutUint64(f[vhdspec.OffOrigSize:], uint64(size))
	be.PutUint64(f[vhdspec.OffCurSize:], uint64(size))
	// qemu-img's force_size geometry: the largest CHS, which readers that
	// trust the geometry cap at the size above.
	be.PutUint16(f[vhdspec.OffGeometry:], 65535)
	f[vhdspec.OffGeometry+2], f[vhdspec.OffGeometry+3] = 16, 255
	be.PutUint32(f[vhdspec.OffDiskType:], vhdspec.DiskFixed)
	copy(f[vhdspec.OffUniqueID:], id[:])
	be.PutUint32(f[vhdspec.OffChecksum:], vhdspec.Checksum(f, vhdspec.OffChecksum))
	return f
}

// Finish turns the raw image at path into a fixed VHD in place: it grows
// the file, sparsely, to Size(its size) and appends the footer. The file's
// data is not read or moved.
func Finish(path string, id [16]byte, unix int64) (virtualSize int64, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := Size(fi.Size())
	if size > MaxSize {
		return 0, fmt.Errorf("a %d-byte image is larger than a VHD can hold (%d bytes)", size, int64(MaxSize))
	}
	if err := f.Truncate(size); err != nil {
		return 0, err
	}
	if _, err := f.WriteAt(Footer(size, id, unix), size); err != nil {
		return 0, err
	}
	return size, nil
}
