package container

import (
	"encoding/binary"
	"fmt"
)

// VDI: a 64-byte text banner, then a little-endian header with four UUIDs in
// VirtualBox's (Windows GUID) byte order. qemu randomises the image and
// last-snapshot UUIDs and leaves the link and parent UUIDs zero. There is no
// checksum.
const (
	vdiSignature  = 0xbeda107f
	vdiVersion    = 0x00010001
	vdiHeaderSize = 0x180 // header_size as v1.1 writes it, counted from offset 72
	vdiUUIDImage  = 0x188
	vdiUUIDSnap   = 0x198
)

func vdiNormalize(m *image, d *deriver) ([]*region, error) {
	h, err := m.read(0, 72+vdiHeaderSize, "header")
	if err != nil {
		return nil, err
	}
	if v := binary.LittleEndian.Uint32(h[68:]); v != vdiVersion {
		return nil, fmt.Errorf("header version %#x, want %#x", v, vdiVersion)
	}
	if n := binary.LittleEndian.Uint32(h[72:]); n < vdiHeaderSize {
		return nil, fmt.Errorf("header size %#x, want at least %#x", n, vdiHeaderSize)
	}
	r := newRegion(0, h)
	r.set(vdiUUIDImage, d.replace(h[vdiUUIDImage:vdiUUIDImage+16], "vdi image uuid", true), "vdi image UUID")
	r.set(vdiUUIDSnap, d.replace(h[vdiUUIDSnap:vdiUUIDSnap+16], "vdi last snapshot uuid", true), "vdi last snapshot UUID")
	return []*region{r}, nil
}
