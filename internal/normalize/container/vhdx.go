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
	// vhdxMaxLog bounds the log held in memory (twice: as read and as
	// edited); qemu's and Hyper-V's default is 1 MiB.
	vhdxMaxLog = 16 << 20
	// vhdxMaxBAT bounds the BAT scanned (in 1 MiB chunks): 32 TiB in
	// 1 MiB blocks, 8 PiB in qemu's default 32 MiB ones.
	vhdxMaxBAT = 256 << 20
	vhdxMiB    = 1 << 20

	vhdxMaxTableEntries = 2047
)

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	// On-disk bytes of the metadata and BAT region GUIDs and of the Page 83
	// and file parameters metadata item GUIDs.
	vhdxMetadataRegion = []byte{0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e}
	vhdxPage83         = []byte{0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46}
	vhdxBATRegion      = []byte{0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08}
	vhdxFileParameters = []byte{0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b}
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

	regions, spans, err := vhdxRegions(m)
	if err != nil {
		return nil, err
	}
	metaSpan, err := vhdxFind(spans, "metadata")
	if err != nil {
		return nil, err
	}
	batSpan, err := vhdxFind(spans, "BAT")
	if err != nil {
		return nil, err
	}
	meta, blockSize, err := vhdxMetadata(m, d, metaSpan)
	if err != nil {
		return nil, err
	}
	logRegion, err := vhdxLog(m, a, spans)
	if err != nil {
		return nil, err
	}
	written := []vhdxSpan{metaSpan}
	if logRegion != nil {
		written = append(written, vhdxSpan{"log", uint64(logRegion.off), uint64(len(logRegion.buf))})
	}
	if err := vhdxCheckBAT(m, batSpan, blockSize, written); err != nil {
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

// vhdxSpan is a byte range of the file that one structure owns.
type vhdxSpan struct {
	what     string
	off, len uint64
}

// overlaps reports whether two spans share a byte; both lie inside the
// file, so the sums cannot overflow.
func (a vhdxSpan) overlaps(b vhdxSpan) bool { return a.off < b.off+b.len && b.off < a.off+a.len }

// vhdxRegions verifies both region tables, which must agree entry for
// entry, and returns them (unchanged) and the regions they locate: each
// MiB-aligned, after the 1 MiB header section, inside the file and apart
// from every other.
func vhdxRegions(m *image) (tables []*region, spans []vhdxSpan, err error) {
	var entries []byte
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
		e := b[16 : 16+32*n]
		if i > 0 && !bytes.Equal(e, entries) {
			return nil, nil, errors.New("the two region tables disagree")
		}
		entries = e
		tables = append(tables, newRegion(off, b))
	}
	for e := entries; len(e) > 0; e = e[32:] {
		s := vhdxSpan{what: "region " + vhdxGUIDName(e[:16]), off: binary.LittleEndian.Uint64(e[16:]), len: uint64(binary.LittleEndian.Uint32(e[24:]))}
		if s.off < vhdxMiB || s.off%vhdxMiB != 0 || s.len == 0 || s.len%vhdxMiB != 0 || s.off > uint64(m.size) || s.len > uint64(m.size)-s.off {
			return nil, nil, fmt.Errorf("%s at %d (%d bytes) is misaligned or not inside the %d-byte file", s.what, s.off, s.len, m.size)
		}
		for _, o := range spans {
			if s.overlaps(o) {
				return nil, nil, fmt.Errorf("%s and %s overlap", o.what, s.what)
			}
		}
		spans = append(spans, s)
	}
	return tables, spans, nil
}

func vhdxGUIDName(g []byte) string {
	switch {
	case bytes.Equal(g, vhdxMetadataRegion):
		return "metadata"
	case bytes.Equal(g, vhdxBATRegion):
		return "BAT"
	}
	return fmt.Sprintf("%x", g)
}

// vhdxFind returns the span of the region named what, or an error.
func vhdxFind(spans []vhdxSpan, what string) (vhdxSpan, error) {
	for _, s := range spans {
		if s.what == "region "+what {
			return s, nil
		}
	}
	return vhdxSpan{}, fmt.Errorf("the region tables have no %s region", what)
}

// vhdxMetadata reads the metadata table in meta and returns the Page 83
// item (the virtual disk id) with a derived GUID, and the block size.
func vhdxMetadata(m *image, d *deriver, meta vhdxSpan) (page83 *region, blockSize uint64, err error) {
	t, err := m.read(int64(meta.off), 64<<10, "metadata table")
	if err != nil {
		return nil, 0, err
	}
	if string(t[:8]) != "metadata" {
		return nil, 0, fmt.Errorf("metadata table signature is %q", t[:8])
	}
	n := binary.LittleEndian.Uint16(t[10:])
	if n > vhdxMaxTableEntries {
		return nil, 0, fmt.Errorf("metadata table has %d entries", n)
	}
	// item returns the bytes of the item whose GUID is id, which must be
	// size bytes inside the metadata region, after the table (MS-VHDX
	// 2.6.1.2: items start at 64 KiB or later).
	item := func(id []byte, size uint32, what string) (int64, []byte, error) {
		for e := t[32 : 32+32*int(n)]; len(e) > 0; e = e[32:] {
			if !bytes.Equal(e[:16], id) {
				continue
			}
			o, l := uint64(binary.LittleEndian.Uint32(e[16:])), binary.LittleEndian.Uint32(e[20:])
			if l != size || o < 64<<10 || o+uint64(size) > meta.len {
				return 0, nil, fmt.Errorf("%s item at %d (%d bytes) is malformed", what, o, l)
			}
			b, err := m.read(int64(meta.off+o), int64(size), what)
			return int64(meta.off + o), b, err
		}
		return 0, nil, fmt.Errorf("metadata table has no %s item", what)
	}
	_, fp, err := item(vhdxFileParameters, 8, "file parameters")
	if err != nil {
		return nil, 0, err
	}
	blockSize = uint64(binary.LittleEndian.Uint32(fp))
	if blockSize < vhdxMiB || blockSize > 256*vhdxMiB || blockSize&(blockSize-1) != 0 {
		return nil, 0, fmt.Errorf("block size %d is not a power of 2 from 1 to 256 MiB", blockSize)
	}
	at, b, err := item(vhdxPage83, 16, "page 83")
	if err != nil {
		return nil, 0, err
	}
	r := newRegion(at, b)
	r.set(0, d.replace(b, "vhdx virtual disk id", true), "vhdx virtual disk id")
	return r, blockSize, nil
}

// vhdxCheckBAT refuses a file one of whose payload or sector bitmap
// blocks overlaps a span we write (the metadata region, the log): the BAT
// is read in chunks, so memory stays bounded whatever its length.
func vhdxCheckBAT(m *image, bat vhdxSpan, blockSize uint64, written []vhdxSpan) error {
	if bat.len > vhdxMaxBAT {
		return fmt.Errorf("BAT of %d bytes is larger than %d", bat.len, vhdxMaxBAT)
	}
	size := max(blockSize, vhdxMiB) // a sector bitmap block is 1 MiB
	for at := uint64(0); at < bat.len; at += vhdxMiB {
		b, err := m.read(int64(bat.off+at), int64(min(vhdxMiB, bat.len-at)), "BAT")
		if err != nil {
			return err
		}
		for i := 0; i+8 <= len(b); i += 8 {
			off := binary.LittleEndian.Uint64(b[i:]) &^ (vhdxMiB - 1) // FileOffsetMB << 20
			if off == 0 {
				continue
			}
			for _, w := range written {
				// off < w.off+w.len, inside the file: off+size fits.
				if off < w.off+w.len && w.off < off+size {
					return fmt.Errorf("BAT entry %d points at a block at %d that overlaps the %s", (at+uint64(i))/8, off, w.what)
				}
			}
		}
	}
	return nil
}

// vhdxLog clears the log. Callers have checked that the active header's
// log GUID is zero: the log is empty and its entries are stale (MS-VHDX
// 2.3.1.2: with a zero LogGuid there is nothing to replay). qemu leaves one
// per BAT update, each with a random GUID, and which of them survive the
// ring's reuse depends on timing, so renaming GUIDs is not enough: the whole
// region becomes zeros. The entries are verified first all the same, so a
// damaged file is refused rather than silently cleaned.
//
// The log must lie after the header section, inside the file and apart
// from every region (the caller checks the BAT's blocks): it is zeroed.
func vhdxLog(m *image, hdr []byte, regions []vhdxSpan) (*region, error) {
	s := vhdxSpan{what: "log", off: binary.LittleEndian.Uint64(hdr[vhdxHdrLogOffset:]), len: uint64(binary.LittleEndian.Uint32(hdr[vhdxHdrLogLength:]))}
	if s.len == 0 {
		return nil, nil
	}
	if s.len%vhdxMiB != 0 || s.off%vhdxMiB != 0 || s.off < vhdxMiB || s.len > vhdxMaxLog || s.off > uint64(m.size) || s.len > uint64(m.size)-s.off {
		return nil, fmt.Errorf("log at %d (%d bytes) is misaligned, too large or not inside the %d-byte file", s.off, s.len, m.size)
	}
	for _, r := range regions {
		if s.overlaps(r) {
			return nil, fmt.Errorf("log at %d (%d bytes) overlaps the %s", s.off, s.len, r.what)
		}
	}
	b, err := m.read(int64(s.off), int64(s.len), "log")
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
	r := newRegion(int64(s.off), b)
	clear(r.buf)
	if !bytes.Equal(r.buf, b) {
		r.fields = append(r.fields, "vhdx stale log entries")
	}
	return r, nil
}
