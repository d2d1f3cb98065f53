package container

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// VMDK sparse extents (monolithicSparse, streamOptimized) start with a
// little-endian header pointing, in 512-byte sectors, at an embedded text
// descriptor, NUL-padded to its allotted size. Its CID is the only random
// field; there is no checksum.
const (
	vmdkDescOffset = 28
	vmdkDescSize   = 36
	vmdkRGDOffset  = 48 // uint64 sectors, 0 for none
	vmdkGDOffset   = 56 // uint64 sectors, vmdkGDAtEnd in a streamOptimized footer's image
	vmdkOverhead   = 64 // uint64: sectors of metadata before the first grain
	vmdkGDAtEnd    = 1<<64 - 1
	vmdkNewlines   = 73 // "\n \r\n", there to catch text-mode transfers
	// vmdkMaxDesc bounds the descriptor held in memory; qemu allots 10 KiB.
	vmdkMaxDesc = 1 << 20
)

func vmdkNormalize(m *image, d *deriver) ([]*region, error) {
	h, err := m.read(0, 512, "header")
	if err != nil {
		return nil, err
	}
	if v := binary.LittleEndian.Uint32(h[4:]); v < 1 || v > 3 {
		return nil, fmt.Errorf("header version %d", v)
	}
	if string(h[vmdkNewlines:vmdkNewlines+4]) != "\n \r\n" {
		return nil, fmt.Errorf("header newline check bytes are %q", h[vmdkNewlines:vmdkNewlines+4])
	}
	off, n := binary.LittleEndian.Uint64(h[vmdkDescOffset:]), binary.LittleEndian.Uint64(h[vmdkDescSize:])
	if off == 0 || n == 0 {
		return nil, errors.New("no embedded descriptor")
	}
	if n > vmdkMaxDesc/512 || off > uint64(m.size)/512 {
		return nil, fmt.Errorf("descriptor at sector %d (%d sectors) is out of bounds", off, n)
	}
	// The whole area is rewritten (its padding zeroed), so it must lie in
	// the metadata before the first grain and end before the grain
	// directories, as qemu and VMware lay them out; both sums are small.
	overhead := binary.LittleEndian.Uint64(h[vmdkOverhead:])
	if off+n > overhead {
		return nil, fmt.Errorf("descriptor at sector %d (%d sectors) runs past the %d metadata sectors before the first grain", off, n, overhead)
	}
	for _, g := range []struct {
		name string
		at   int
	}{{"redundant grain directory", vmdkRGDOffset}, {"grain directory", vmdkGDOffset}} {
		if s := binary.LittleEndian.Uint64(h[g.at:]); s != 0 && s != vmdkGDAtEnd && s < off+n {
			return nil, fmt.Errorf("descriptor at sector %d (%d sectors) does not end before the %s at sector %d", off, n, g.name, s)
		}
	}
	area, err := m.read(int64(off)*512, int64(n)*512, "descriptor")
	if err != nil {
		return nil, err
	}
	text := area
	if i := bytes.IndexByte(area, 0); i >= 0 {
		text = area[:i]
	}
	if !bytes.HasPrefix(text, []byte("# Disk DescriptorFile")) {
		return nil, errors.New("descriptor does not start with \"# Disk DescriptorFile\"")
	}

	lines := bytes.SplitAfter(text, []byte("\n"))
	cid := -1
	for i, l := range lines {
		if bytes.HasPrefix(l, []byte("CID=")) {
			if cid >= 0 {
				return nil, errors.New("descriptor has more than one CID line")
			}
			cid = i
		}
	}
	if cid < 0 {
		return nil, errors.New("descriptor has no CID line")
	}
	// qemu prints the CID with %x, so it is 1 to 8 digits long.
	v := bytes.TrimRight(lines[cid][len("CID="):], "\r\n")
	if _, err := strconv.ParseUint(string(v), 16, 32); err != nil || len(v) > 8 {
		return nil, fmt.Errorf("descriptor CID %q is not a 32-bit hex number", v)
	}
	u := d.uuid("vmdk cid")
	c := binary.BigEndian.Uint32(u[:])
	if c == 0xffffffff { // means "no parent" in parentCID
		c--
	}
	lines[cid] = append(fmt.Appendf(nil, "CID=%08x", c), lines[cid][len("CID=")+len(v):]...)

	// Always eight digits, so the text, and what follows the CID, lands in
	// the same place every time; the padding after it is zeroed because
	// qemu's in-place CID rewrite can leave stale bytes behind the NUL.
	out := bytes.Join(lines, nil)
	if len(out) > len(area) {
		return nil, errors.New("descriptor does not fit its area with an 8-digit CID")
	}
	r := newRegion(int64(off)*512, area)
	clear(r.buf)
	copy(r.buf, out)
	if !bytes.Equal(out, text) {
		r.fields = append(r.fields, "vmdk descriptor CID")
	}
	if len(bytes.Trim(area[len(text):], "\x00")) > 0 {
		r.fields = append(r.fields, "vmdk descriptor padding")
	}
	return []*region{r}, nil
}
