package container

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// VHDX (MS-VHDX): two 4 KiB headers, the one with the higher sequence number
// active, two copies of a region table locating the BAT and the metadata
// region, and a circular log. Every structure but the metadata carries a
// CRC-32C over itself with the checksum field zeroed. All integers are
// little-endian; GUIDs are in Windows layout.
const (
	vhdxHeader1   = 64 << 10
	vhdxHeader2   = 128 << 10
	vhdxHeaderLen = 4 << 10
	vhdxRegion1   = 192 << 10
	vhdxRegion2   = 256 << 10
	vhdxRegionLen = 64 << 10

	vhdxHdrSeq       = 8
	vhdxHdrFileWrite = 16
	vhdxHdrDataWrite = 32
	vhdxHdrLogGUID   = 48
	vhdxHdrLogLength = 68
	vhdxHdrLogOffset = 72

	vhdxLogSector   = 4 << 10
	vhdxEntryLength = 8
	vhdxEntryGUID   = 32
	// vhdxMaxLog bounds the log held in memory; qemu's default is 1 MiB.
	vhdxMaxLog = 256 << 20

	vhdxMaxTableEntries = 2047
)

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	// On-disk bytes of the metadata region and Page 83 data item GUIDs.
	vhdxMetadataRegion = []byte{0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e}
	vhdxPage83         = []byte{0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46}
)

// vhdxCRC is the CRC-32C of the n bytes of b from off, wrapping around the
// end of b (the log is a ring), with the checksum field at offset 4 read as
// zero.
func vhdxCRC(b []byte, off, n int) uint32 {
	c := crc32.Update(0, castagnoli, b[off:off+4])
	c = crc32.Update(c, castagnoli, make([]byte, 4))
	for at := 8; at < n; {
		p := (off + at) % len(b)
		k := min(n-at, len(b)-p)
		c = crc32.Update(c, castagnoli, b[p:p+k])
		at += k
	}
	return c
}

func vhdxVerify(b []byte, sig, what string) error {
	if string(b[:4]) != sig {
		return fmt.Errorf("%s: signature is %q, want %q", what, b[:4], sig)
	}
	if got, want := binary.LittleEndian.Uint32(b[4:]), vhdxCRC(b, 0, len(b)); got != want {
		return fmt.Errorf("%s: checksum is %#08x, contents give %#08x", what, got, want)
	}
	return nil
}

func vhdxNormalize(m *image, d *deriver) ([]*region, error) {
	var hs [2]*region
	for i, off := range []int64{vhdxHeader1, vhdxHeader2} {
		what := fmt.Sprintf("header %d", i+1)
		b, err := m.read(off, vhdxHeaderLen, what)
		if err != nil {
			return nil, err
		}
		if err := vhdxVerify(b, "head", what); err != nil {
			return nil, err
		}
		hs[i] = newRegion(off, b)
	}
	seq := func(i int) uint64 { return binary.LittleEndian.Uint64(hs[i].orig[vhdxHdrSeq:]) }
	active := 0
	if seq(1) > seq(0) {
		active = 1
	}
	if seq(0) == seq(1) && !bytes.Equal(hs[0].orig, hs[1].orig) {
		return nil, errors.New("headers differ but have the same sequence number")
	}
	a := hs[active].orig
	if !bytes.Equal(a[vhdxHdrLogGUID:vhdxHdrLogGUID+16], make([]byte, 16)) {
		// The log holds updates not yet applied; renaming its GUID would
		// orphan them. Opening the image read-write (qemu-img check -r all)
		// replays and empties it.
		return nil, errors.New("log is not empty (active header has a log GUID)")
	}

	regions, meta, err := vhdxMetadata(m, d)
	if err != nil {
		return nil, err
	}
	logRegion, err := vhdxLog(m, a)
	if err != nil {
		return nil, err
	}

	// qemu starts the sequence at a random number and bumps it on each
	// update; only the order matters, so keep it with the smallest values.
	for i, h := range hs {
		n := fmt.Sprintf("vhdx header %d ", i+1)
		s := uint64(1)
		if seq(i) > seq(1-i) {
			s = 2
		}
		h.set(vhdxHdrSeq, binary.LittleEndian.AppendUint64(nil, s), n+"sequence number")
		h.set(vhdxHdrFileWrite, d.replace(h.orig[vhdxHdrFileWrite:vhdxHdrFileWrite+16], n+"file write guid", true), n+"file write GUID")
		h.set(vhdxHdrDataWrite, d.replace(h.orig[vhdxHdrDataWrite:vhdxHdrDataWrite+16], n+"data write guid", true), n+"data write GUID")
		// Only the inactive header can have one here; it may name a log
		// entry's GUID, which replace keeps it matching.
		h.set(vhdxHdrLogGUID, d.replace(h.orig[vhdxHdrLogGUID:vhdxHdrLogGUID+16], n+"log guid", true), n+"log GUID")
		h.set(4, binary.LittleEndian.AppendUint32(nil, vhdxCRC(h.buf, 0, len(h.buf))), n+"checksum")
	}
	out := append(hs[:], meta)
	out = append(out, regions...)
	if logRegion != nil {
		out = append(out, logRegion)
	}
	return out, nil
}

// vhdxMetadata verifies both region tables and returns them (unchanged) and
// the Page 83 item (the virtual disk id) with a derived GUID.
func vhdxMetadata(m *image, d *deriver) (tables []*region, page83 *region, err error) {
	var metaOff, metaLen uint64
	for i, off := range []int64{vhdxRegion1, vhdxRegion2} {
		what := fmt.Sprintf("region table %d", i+1)
		b, err := m.read(off, vhdxRegionLen, what)
		if err != nil {
			return nil, nil, err
		}
		if err := vhdxVerify(b, "regi", what); err != nil {
			return nil, nil, err
		}
		n := binary.LittleEndian.Uint32(b[8:])
		if n > vhdxMaxTableEntries {
			return nil, nil, fmt.Errorf("%s: %d entries", what, n)
		}
		found := false
		for e := b[16 : 16+32*n]; len(e) > 0; e = e[32:] {
			if bytes.Equal(e[:16], vhdxMetadataRegion) {
				found = true
				o, l := binary.LittleEndian.Uint64(e[16:]), uint64(binary.LittleEndian.Uint32(e[24:]))
				if i > 0 && (o != metaOff || l != metaLen) {
					return nil, nil, errors.New("region tables disagree on the metadata region")
				}
				metaOff, metaLen = o, l
			}
		}
		if !found {
			return nil, nil, fmt.Errorf("%s: no metadata region", what)
		}
		tables = append(tables, newRegion(off, b))
	}
	if metaLen < 64<<10 || metaOff > uint64(m.size) {
		return nil, nil, fmt.Errorf("metadata region at %d (%d bytes) is out of bounds", metaOff, metaLen)
	}
	t, err := m.read(int64(metaOff), 64<<10, "metadata table")
	if err != nil {
		return nil, nil, err
	}
	if string(t[:8]) != "metadata" {
		return nil, nil, fmt.Errorf("metadata table signature is %q", t[:8])
	}
	n := binary.LittleEndian.Uint16(t[10:])
	if n > vhdxMaxTableEntries {
		return nil, nil, fmt.Errorf("metadata table has %d entries", n)
	}
	for e := t[32 : 32+32*int(n)]; len(e) > 0; e = e[32:] {
		if !bytes.Equal(e[:16], vhdxPage83) {
			continue
		}
		o, l := uint64(binary.LittleEndian.Uint32(e[16:])), binary.LittleEndian.Uint32(e[20:])
		if l != 16 || o+16 > metaLen {
			return nil, nil, fmt.Errorf("page 83 item at %d (%d bytes) is malformed", o, l)
		}
		b, err := m.read(int64(metaOff+o), 16, "page 83 data")
		if err != nil {
			return nil, nil, err
		}
		r := newRegion(int64(metaOff+o), b)
		r.set(0, d.replace(b, "vhdx virtual disk id", true), "vhdx virtual disk id")
		return tables, r, nil
	}
	return nil, nil, errors.New("metadata table has no page 83 item")
}

// vhdxLog clears the log. Callers have checked that the active header's
// log GUID is zero: the log is empty and its entries are stale (MS-VHDX
// 2.3.1.2: with a zero LogGuid there is nothing to replay). qemu leaves one
// per BAT update, each with a random GUID, and which of them survive the
// ring's reuse depends on timing, so renaming GUIDs is not enough: the whole
// region becomes zeros. The entries are verified first all the same, so a
// damaged file is refused rather than silently cleaned.
func vhdxLog(m *image, hdr []byte) (*region, error) {
	n := int64(binary.LittleEndian.Uint32(hdr[vhdxHdrLogLength:]))
	off := int64(binary.LittleEndian.Uint64(hdr[vhdxHdrLogOffset:]))
	if n == 0 {
		return nil, nil
	}
	if n%(1<<20) != 0 || off%(1<<20) != 0 || n > vhdxMaxLog {
		return nil, fmt.Errorf("log at %d (%d bytes) is misaligned or too large", off, n)
	}
	b, err := m.read(off, n, "log")
	if err != nil {
		return nil, err
	}
	// Entries start on sector boundaries with "loge"; their other sectors
	// start with "desc", "zero" or "data", so a scan finds every entry.
	for at := 0; at < len(b); at += vhdxLogSector {
		if string(b[at:at+4]) != "loge" {
			continue
		}
		l := int(binary.LittleEndian.Uint32(b[at+vhdxEntryLength:]))
		if l < vhdxLogSector || l%vhdxLogSector != 0 || l > len(b) {
			return nil, fmt.Errorf("log entry at log offset %#x has length %d", at, l)
		}
		if got, want := binary.LittleEndian.Uint32(b[at+4:]), vhdxCRC(b, at, l); got != want {
			return nil, fmt.Errorf("log entry at log offset %#x: checksum is %#08x, contents give %#08x", at, got, want)
		}
	}
	r := newRegion(off, b)
	r.set(0, make([]byte, len(b)), "vhdx stale log entries")
	return r, nil
}
