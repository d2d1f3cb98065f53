package container

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/vhdspec"
)

// VHD (qemu's "vpc"): a 512-byte big-endian footer at the end of the file
// (internal/spec/vhdspec); dynamic disks also copy it to offset 0 and point
// it at a 1024-byte dynamic disk header. Each carries a one's-complement
// byte-sum checksum.
const (
	vpcCookie        = vhdspec.Cookie
	vpcDynCookie     = "cxsparse"
	vpcFooterSize    = vhdspec.FooterSize
	vpcDynHeaderSize = 1024

	vpcDynChecksum = 36
)

func vpcVerify(b []byte, cookie string, field int, what string) error {
	if string(b[:len(cookie)]) != cookie {
		return fmt.Errorf("%s: cookie is %q, want %q", what, b[:len(cookie)], cookie)
	}
	if got, want := binary.BigEndian.Uint32(b[field:]), vhdspec.Checksum(b, field); got != want {
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
	if err := vpcVerify(end, vpcCookie, vhdspec.OffChecksum, "footer at end of file"); err != nil {
		return nil, err
	}
	footers := []*region{newRegion(m.size-vpcFooterSize, end)}
	switch t := binary.BigEndian.Uint32(end[vhdspec.OffDiskType:]); t {
	case vhdspec.DiskFixed:
	case vhdspec.DiskDynamic:
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

	ts := uint32(min(max(unix-vhdspec.Epoch, 0), 1<<32-1))
	for _, r := range footers {
		r.set(vhdspec.OffTimestamp, binary.BigEndian.AppendUint32(nil, ts), "vpc footer timestamp")
		r.set(vhdspec.OffUniqueID, d.replace(r.buf[vhdspec.OffUniqueID:vhdspec.OffUniqueID+16], "vpc unique id", false), "vpc footer unique id")
		r.set(vhdspec.OffChecksum, binary.BigEndian.AppendUint32(nil, vhdspec.Checksum(r.buf, vhdspec.OffChecksum)), "vpc footer checksum")
	}
	return footers, nil
}
