package container

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// VHD (qemu's "vpc"): a 512-byte big-endian footer at the end of the file;
// dynamic disks also copy it to offset 0 and point it at a 1024-byte dynamic
// disk header. Each carries a one's-complement byte-sum checksum.
const (
	vpcCookie        = "conectix"
	vpcDynCookie     = "cxsparse"
	vpcFooterSize    = 512
	vpcDynHeaderSize = 1024

	vpcTimestamp = 24 // seconds since 2000-01-01 UTC
	vpcDiskType  = 60
	vpcChecksum  = 64
	vpcUniqueID  = 68

	vpcDynChecksum = 36

	vpcDiskFixed   = 2
	vpcDiskDynamic = 3

	vpcEpoch = 946684800 // 2000-01-01T00:00:00Z in Unix seconds
)

// vpcSum is the VHD checksum: the one's complement of the byte sum of the
// structure, skipping the checksum field itself.
func vpcSum(b []byte, field int) uint32 {
	var s uint32
	for i, c := range b {
		if i < field || i >= field+4 {
			s += uint32(c)
		}
	}
	return ^s
}

func vpcVerify(b []byte, cookie string, field int, what string) error {
	if string(b[:len(cookie)]) != cookie {
		return fmt.Errorf("%s: cookie is %q, want %q", what, b[:len(cookie)], cookie)
	}
	if got, want := binary.BigEndian.Uint32(b[field:]), vpcSum(b, field); got != want {
		return fmt.Errorf("%s: checksum is %#08x, contents sum to %#08x", what, got, want)
	}
	return nil
}

func vpcNormalize(m *image, d *deriver, unix int64) ([]*region, error) {
	if m.size < vpcFooterSize {
		return nil, errors.New("file too small for a footer")
	}
	end, err := m.read(m.size-vpcFooterSize, vpcFooterSize, "footer")
	if err != nil {
		return nil, err
	}
	if err := vpcVerify(end, vpcCookie, vpcChecksum, "footer at end of file"); err != nil {
		return nil, err
	}
	footers := []*region{newRegion(m.size-vpcFooterSize, end)}
	switch t := binary.BigEndian.Uint32(end[vpcDiskType:]); t {
	case vpcDiskFixed:
	case vpcDiskDynamic:
		head, err := m.read(0, vpcFooterSize, "footer copy")
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(head, end) {
			return nil, errors.New("footer copy at offset 0 differs from the footer at the end of the file")
		}
		// Nothing in the dynamic header varies (its parent fields are zero
		// for a disk without a parent), but it is part of what we vouch for.
		off := binary.BigEndian.Uint64(end[16:])
		if off > uint64(m.size) {
			return nil, fmt.Errorf("footer data offset %d lies beyond the end of the file", off)
		}
		dyn, err := m.read(int64(off), vpcDynHeaderSize, "dynamic disk header")
		if err != nil {
			return nil, err
		}
		if err := vpcVerify(dyn, vpcDynCookie, vpcDynChecksum, "dynamic disk header"); err != nil {
			return nil, err
		}
		footers = append(footers, newRegion(0, head))
	default:
		// Differencing disks name their parent by unique id and timestamp;
		// qemu-img convert never writes one.
		return nil, fmt.Errorf("unsupported disk type %d", t)
	}

	ts := uint32(min(max(unix-vpcEpoch, 0), 1<<32-1))
	for _, r := range footers {
		r.set(vpcTimestamp, binary.BigEndian.AppendUint32(nil, ts), "vpc footer timestamp")
		r.set(vpcUniqueID, d.replace(r.buf[vpcUniqueID:vpcUniqueID+16], "vpc unique id", false), "vpc footer unique id")
		r.set(vpcChecksum, binary.BigEndian.AppendUint32(nil, vpcSum(r.buf, vpcChecksum)), "vpc footer checksum")
	}
	return footers, nil
}
