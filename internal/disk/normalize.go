package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// NormalizeOptions configure Normalize.
type NormalizeOptions struct {
	// Seed derives every identifier Normalize writes, as Options.Seed does
	// for Plan. Same seed, same bytes.
	Seed []byte
}

// NormalizeReport says what Normalize found and changed.
type NormalizeReport struct {
	// Table is "gpt" (protective or hybrid MBR), "mbr" (legacy DOS
	// label) or "none" (no partition table, e.g. a bare filesystem).
	Table string
	// Fields names what was rewritten, in this order: "MBR disk
	// signature", "disk GUID", "partition N GUID", "backup GPT header",
	// "backup GPT partition entries". Empty when the image already was
	// normal for the seed.
	Fields []string
}

// Normalize replaces the identifiers that partitioning tools pick at
// random with ones derived from o.Seed, so that two builds of the same
// image are byte-identical. f is an image with 512-byte sectors; it is
// rewritten in place.
//
//   - MBR disk signature (bytes 440..443): guidSource.mbrSignature, the
//     same value Plan gives, for legacy MBRs, hybrid MBRs and protective
//     MBRs alike. sgdisk leaves it 0 on a protective MBR but Write sets
//     it, so Normalize does too: an image Write made with the same seed
//     keeps its signature.
//   - GPT disk GUID: role "disk", as Plan, so it too is kept.
//   - GPT unique partition GUIDs: role "partition-N", N the 1-based entry
//     index, for every entry with a non-nil type GUID. Plan uses other
//     roles ("esp", "biosboot", "xbootldr", and DefaultRootGUID for the
//     root), so Normalize changes the partition GUIDs of a Write image.
//
// The primary GPT is then re-checksummed and the backup header and entry
// array are rewritten from it at the end of the disk (repairing a stale
// or missing backup, which the report then lists). Types, names,
// attributes and LBAs are not touched, nor is anything else in sector 0.
//
// Nothing is written unless the tables are sound: a primary GPT header or
// entry array with a wrong CRC32, a GPT whose backup location is not the
// last sector (a resized image), a GPT without a protective MBR, or
// sector 0 with partition entries but no 0x55AA signature are refused.
func Normalize(f *os.File, o NormalizeOptions) (NormalizeReport, error) {
	r, err := normalize(f, o)
	if err != nil {
		err = fmt.Errorf("normalizing %s: %w", f.Name(), err)
	}
	return r, err
}

func normalize(f *os.File, o NormalizeOptions) (NormalizeReport, error) {
	st, err := f.Stat()
	if err != nil {
		return NormalizeReport{}, err
	}
	sectors := st.Size() / SectorSize
	s0, s1 := make([]byte, SectorSize), make([]byte, SectorSize)
	if sectors >= 1 {
		if err := readAt(f, s0, 0); err != nil {
			return NormalizeReport{}, err
		}
	}
	if sectors >= 2 {
		if err := readAt(f, s1, SectorSize); err != nil {
			return NormalizeReport{}, err
		}
	}
	table, err := classify(s0, s1)
	if err != nil {
		return NormalizeReport{}, err
	}
	r := NormalizeReport{Table: table}
	if table == "none" {
		return r, nil
	}
	g := guidSource{seed: o.Seed}
	var sig [4]byte
	binary.LittleEndian.PutUint32(sig[:], g.mbrSignature())
	var w writes
	if !bytes.Equal(s0[mbrSignatureOffset:mbrSignatureOffset+4], sig[:]) {
		r.Fields = append(r.Fields, "MBR disk signature")
	}
	if table == "gpt" {
		fields, err := normalizeGPT(f, s1, sectors-1, g, &w)
		if err != nil {
			return NormalizeReport{}, err
		}
		r.Fields = append(r.Fields, fields...)
	}
	// Sector 0 last, after the GPT, which matters more.
	w.add(mbrSignatureOffset, s0[mbrSignatureOffset:mbrSignatureOffset+4], sig[:])
	for _, x := range w {
		if _, err := f.WriteAt(x.data, x.off); err != nil {
			return r, fmt.Errorf("writing: %w", err)
		}
	}
	if len(w) > 0 {
		if err := f.Sync(); err != nil {
			return r, fmt.Errorf("syncing: %w", err)
		}
	}
	return r, nil
}

// Sector 0 and GPT header offsets (UEFI 2.10, 5.2 and 5.3.2).
const (
	mbrSignatureOffset = 440
	mbrEntriesOffset   = 446
	mbrBootSigOffset   = 510

	gptHdrCRC         = 16
	gptHdrMyLBA       = 24
	gptHdrAltLBA      = 32
	gptHdrFirstUsable = 40
	gptHdrLastUsable  = 48
	gptHdrDiskGUID    = 56
	gptHdrEntriesLBA  = 72
	gptHdrNumEntries  = 80
	gptHdrEntrySize   = 84
	gptHdrEntriesCRC  = 88
	gptHdrMinSize     = 92

	gptEntryGUID = 16
	// maxGPTEntries bounds what a header may make us read; sgdisk's
	// default is 16 KiB.
	maxGPTEntries = 1 << 20
)

// classify decides from sectors 0 and 1 which table the image has,
// refusing the combinations tools disagree about.
func classify(s0, s1 []byte) (string, error) {
	magic := s0[mbrBootSigOffset] == 0x55 && s0[mbrBootSigOffset+1] == 0xAA
	hasGPT := string(s1[:8]) == "EFI PART"
	var protective, claims, badBoot bool
	for i := 0; i < 4; i++ {
		e := s0[mbrEntriesOffset+16*i : mbrEntriesOffset+16*(i+1)]
		if bytes.Equal(e, make([]byte, 16)) {
			continue
		}
		claims = true
		protective = protective || e[4] == MBRTypeGPTProtector
		badBoot = badBoot || (e[0] != 0 && e[0] != 0x80)
	}
	switch {
	case hasGPT && !magic:
		return "", errors.New("LBA 1 holds a GPT header but sector 0 lacks the 0x55AA boot signature: the protective MBR is missing or corrupt")
	case hasGPT && !protective:
		return "", errors.New("LBA 1 holds a GPT header but the MBR has no 0xEE protective entry: tools disagree whether this is a GPT or an MBR disk")
	case hasGPT:
		return "gpt", nil
	case magic && protective:
		return "", errors.New("the MBR has a 0xEE GPT-protective entry but LBA 1 holds no GPT header: the primary GPT is corrupt (or the sectors are not 512 bytes)")
	case !magic && claims && !badBoot:
		return "", errors.New("sector 0 has MBR partition entries but lacks the 0x55AA boot signature: the MBR is corrupt")
	case !magic, isBootRecord(s0), badBoot:
		// As libblkid: a boot flag other than 0x00/0x80 is no DOS table.
		return "none", nil
	}
	return "mbr", nil
}

// isBootRecord reports a FAT, exFAT or NTFS boot sector, which carries
// 0x55AA too: the image is a bare filesystem, not a partitioned disk.
func isBootRecord(s0 []byte) bool {
	if s0[0] != 0xEB && s0[0] != 0xE9 {
		return false
	}
	oem := string(s0[3:11])
	return oem == "NTFS    " || oem == "EXFAT   " ||
		string(s0[54:57]) == "FAT" || string(s0[82:87]) == "FAT32"
}

// writes are the regions to rewrite, in order.
type writes []region

type region struct {
	off  int64
	data []byte
}

// add queues new at off unless it is what is there already, so that a
// normal image is not written at all.
func (w *writes) add(off int64, old, new []byte) {
	if !bytes.Equal(old, new) {
		*w = append(*w, region{off, new})
	}
}

// normalizeGPT checks the primary GPT whose header is hdr (LBA 1), queues
// the backup and then the primary rewritten, and returns the fields that
// change. Nothing is queued if the primary is unsound.
func normalizeGPT(f *os.File, hdr []byte, last int64, g guidSource, w *writes) ([]string, error) {
	le := binary.LittleEndian
	size := le.Uint32(hdr[12:])
	if size < gptHdrMinSize || size > SectorSize {
		return nil, fmt.Errorf("primary GPT header size %d is outside %d..%d bytes", size, gptHdrMinSize, SectorSize)
	}
	if got, want := headerCRC(hdr, size), le.Uint32(hdr[gptHdrCRC:]); got != want {
		return nil, fmt.Errorf("primary GPT header CRC32 is %08x but the header records %08x: the header is corrupt", got, want)
	}
	if my := le.Uint64(hdr[gptHdrMyLBA:]); my != 1 {
		return nil, fmt.Errorf("primary GPT header says it is at LBA %d, not 1", my)
	}
	if alt := le.Uint64(hdr[gptHdrAltLBA:]); alt != uint64(last) {
		return nil, fmt.Errorf("primary GPT header puts the backup at LBA %d but the last sector is %d: the image was resized (sgdisk -e moves the backup)", alt, last)
	}
	n, esz := le.Uint32(hdr[gptHdrNumEntries:]), le.Uint32(hdr[gptHdrEntrySize:])
	if esz < 128 || esz&(esz-1) != 0 || n == 0 || uint64(n)*uint64(esz) > maxGPTEntries {
		return nil, fmt.Errorf("primary GPT header describes %d entries of %d bytes: want entries of 128 bytes times a power of 2, at most %d bytes in all", n, esz, maxGPTEntries)
	}
	arrayBytes := int64(n) * int64(esz)
	arraySectors := (arrayBytes + SectorSize - 1) / SectorSize
	entriesLBA := int64(le.Uint64(hdr[gptHdrEntriesLBA:]))
	firstUsable, lastUsable := int64(le.Uint64(hdr[gptHdrFirstUsable:])), int64(le.Uint64(hdr[gptHdrLastUsable:]))
	backupEntriesLBA := last - arraySectors
	if entriesLBA < 2 || entriesLBA+arraySectors > firstUsable || firstUsable > lastUsable || lastUsable >= backupEntriesLBA {
		return nil, fmt.Errorf("primary GPT areas overlap: entries at LBA %d..%d, usable LBA %d..%d, backup entries from LBA %d",
			entriesLBA, entriesLBA+arraySectors-1, firstUsable, lastUsable, backupEntriesLBA)
	}
	entries := make([]byte, arrayBytes)
	if err := readAt(f, entries, entriesLBA*SectorSize); err != nil {
		return nil, err
	}
	if got, want := crc32.ChecksumIEEE(entries), le.Uint32(hdr[gptHdrEntriesCRC:]); got != want {
		return nil, fmt.Errorf("primary GPT partition entries CRC32 is %08x but the header records %08x: the entry array is corrupt", got, want)
	}
	oldBackupHdr, oldBackupEntries := make([]byte, SectorSize), make([]byte, arrayBytes)
	if err := readAt(f, oldBackupHdr, last*SectorSize); err != nil {
		return nil, err
	}
	if err := readAt(f, oldBackupEntries, backupEntriesLBA*SectorSize); err != nil {
		return nil, err
	}
	// What the backup should be before our changes: differences from it
	// are repairs, reported as such.
	staleHdr := !bytes.Equal(oldBackupHdr, backupHeader(hdr, size, last, backupEntriesLBA))
	staleEntries := !bytes.Equal(oldBackupEntries, entries)

	newHdr := bytes.Clone(hdr)
	diskGUID := gptBytes(g.uuid("disk"))
	copy(newHdr[gptHdrDiskGUID:], diskGUID[:])
	newEntries := bytes.Clone(entries)
	var fields []string
	if !bytes.Equal(hdr[gptHdrDiskGUID:gptHdrDiskGUID+16], diskGUID[:]) {
		fields = append(fields, "disk GUID")
	}
	for i := int64(0); i < int64(n); i++ {
		e := newEntries[i*int64(esz) : (i+1)*int64(esz)]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue // the nil type GUID marks an unused entry
		}
		u := gptBytes(g.uuid(fmt.Sprintf("partition-%d", i+1)))
		if !bytes.Equal(e[gptEntryGUID:gptEntryGUID+16], u[:]) {
			copy(e[gptEntryGUID:], u[:])
			fields = append(fields, fmt.Sprintf("partition %d GUID", i+1))
		}
	}
	le.PutUint32(newHdr[gptHdrEntriesCRC:], crc32.ChecksumIEEE(newEntries))
	le.PutUint32(newHdr[gptHdrCRC:], headerCRC(newHdr, size))

	if staleHdr {
		fields = append(fields, "backup GPT header")
	}
	if staleEntries {
		fields = append(fields, "backup GPT partition entries")
	}
	// The backup first: interrupted half-way, one of the two copies is
	// always consistent on its own, old or new.
	w.add(backupEntriesLBA*SectorSize, oldBackupEntries, newEntries)
	w.add(last*SectorSize, oldBackupHdr, backupHeader(newHdr, size, last, backupEntriesLBA))
	w.add(entriesLBA*SectorSize, entries, newEntries)
	w.add(SectorSize, hdr, newHdr)
	return fields, nil
}

// backupHeader is the backup sector for primary header hdr: the same
// header with its own and the alternate LBA swapped, entries just before
// it, and zeros after the header as sgdisk writes.
func backupHeader(hdr []byte, size uint32, last, entriesLBA int64) []byte {
	b := make([]byte, SectorSize)
	copy(b, hdr[:size])
	le := binary.LittleEndian
	le.PutUint64(b[gptHdrMyLBA:], uint64(last))
	le.PutUint64(b[gptHdrAltLBA:], 1)
	le.PutUint64(b[gptHdrEntriesLBA:], uint64(entriesLBA))
	le.PutUint32(b[gptHdrCRC:], headerCRC(b, size))
	return b
}

// headerCRC is the CRC32 of the first size bytes with the CRC field zero.
func headerCRC(hdr []byte, size uint32) uint32 {
	h := bytes.Clone(hdr[:size])
	clear(h[gptHdrCRC : gptHdrCRC+4])
	return crc32.ChecksumIEEE(h)
}

// gptBytes converts an RFC 4122 UUID to GPT's on-disk order, where the
// first three fields are little-endian.
func gptBytes(u [16]byte) [16]byte {
	return [16]byte{u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6],
		u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]}
}

func readAt(f *os.File, b []byte, off int64) error {
	if _, err := f.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("the image ends before byte %d, where its partition table continues", off+int64(len(b)))
		}
		return fmt.Errorf("reading: %w", err)
	}
	return nil
}
