package ova

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// The sparse extent header at the start of a VMDK (VMware's "Virtual Disk
// Format 1.1", SparseExtentHeader); all little-endian.
const (
	vmdkHeaderSize    = 512
	vmdkMagic         = 0x564d444b // "KDMV"
	offVMDKFlags      = 8
	offVMDKCapacity   = 12 // in 512-byte sectors
	offVMDKCompressAl = 77

	flagCompressed  = 1 << 16 // grains are compressed
	flagMarkers     = 1 << 17 // grains and tables carry markers
	compressDeflate = 1
)

// checkVMDK refuses a disk whose header is not a stream-optimized VMDK's
// (compressed grains with markers, deflate: what the OVF's
// "#streamOptimized" format promises) of capacity bytes, so that a wrong
// file or capacity fails here and not in the importer.
func checkVMDK(disk *os.File, size, capacity int64) error {
	if size < vmdkHeaderSize {
		return fmt.Errorf("%d bytes is too short for a VMDK (its header alone is %d)", size, vmdkHeaderSize)
	}
	h := make([]byte, vmdkHeaderSize)
	if _, err := disk.ReadAt(h, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("the disk shrank below its %d-byte VMDK header", vmdkHeaderSize)
		}
		return err
	}
	le := binary.LittleEndian
	if le.Uint32(h) != vmdkMagic {
		return fmt.Errorf("not a VMDK sparse extent (magic % x, want \"KDMV\"): convert it with qemu-img -O vmdk -o subformat=streamOptimized", h[:4])
	}
	flags := le.Uint32(h[offVMDKFlags:])
	algo := le.Uint16(h[offVMDKCompressAl:])
	if flags&(flagCompressed|flagMarkers) != flagCompressed|flagMarkers || algo != compressDeflate {
		return fmt.Errorf("a VMDK but not stream-optimized (flags %#x, compression %d; want compressed grains with markers, deflate): convert it with -o subformat=streamOptimized", flags, algo)
	}
	sectors := le.Uint64(h[offVMDKCapacity:])
	if sectors > uint64(1<<63-1)/512 || int64(sectors)*512 != capacity {
		return fmt.Errorf("its header says %d sectors of 512 bytes, not the capacity given (%d bytes)", sectors, capacity)
	}
	return nil
}
