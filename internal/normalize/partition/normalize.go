// Package partition normalises the partition table (GPT or MBR) of a disk
// image that other tools made and lists its partitions; every byte it reads
// is untrusted.
package partition

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/seedguid"
)

// NormalizeOptions configure Normalize.
type NormalizeOptions struct {
	// Seed derives every identifier Normalize writes, as disk.Options.Seed
	// does for disk.Plan. Same seed, same bytes.
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
//   - MBR disk signature (bytes 440..443): seedguid.Source.MBRSignature,
//     the same value disk.Plan gives, for legacy MBRs, hybrid MBRs and
//     protective MBRs alike. sgdisk leaves it 0 on a protective MBR but
//     disk.Layout.Write sets it, so Normalize does too: an image Write
//     made with the same seed keeps its signature.
//   - GPT disk GUID: role seedguid.DiskRole, as disk.Plan, so it too is
//     kept.
//   - GPT unique partition GUIDs: role "partition-N", N the 1-based entry
//     index, for every entry with a non-nil type GUID. disk.Plan uses
//     other roles ("esp", "biosboot", "xbootldr", and disk.DefaultRootGUID
//     for the root), so Normalize changes the partition GUIDs of a Write
//     image.
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
	sectors := st.Size() / gptspec.SectorSize
	s0, s1 := make([]byte, gptspec.SectorSize), make([]byte, gptspec.SectorSize)
	if sectors >= 1 {
		if err := readAt(f, s0, 0); err != nil {
			return NormalizeReport{}, err
		}
	}
	if sectors >= 2 {
		if err := readAt(f, s1, gptspec.SectorSize); err != nil {
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
	g := seedguid.Source{Seed: o.Seed}
	var sig [4]byte
	binary.LittleEndian.PutUint32(sig[:], g.MBRSignature())
	var w writes
	if !bytes.Equal(s0[gptspec.MBRSignatureOffset:gptspec.MBRSignatureOffset+4], sig[:]) {
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
	w.add(gptspec.MBRSignatureOffset, s0[gptspec.MBRSignatureOffset:gptspec.MBRSignatureOffset+4], sig[:])
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
func normalizeGPT(f *os.File, hdr []byte, last int64, g seedguid.Source, w *writes) ([]string, error) {
	le := binary.LittleEndian
	size := le.Uint32(hdr[gptspec.GPTHdrSize:])
	if size < gptspec.GPTHdrMinSize || size > gptspec.SectorSize {
		return nil, fmt.Errorf("primary GPT header size %d is outside %d..%d bytes", size, gptspec.GPTHdrMinSize, gptspec.SectorSize)
	}
	if got, want := gptspec.HeaderCRC(hdr, size), le.Uint32(hdr[gptspec.GPTHdrCRC:]); got != want {
		return nil, fmt.Errorf("primary GPT header CRC32 is %08x but the header records %08x: the header is corrupt", got, want)
	}
	if my := le.Uint64(hdr[gptspec.GPTHdrMyLBA:]); my != 1 {
		return nil, fmt.Errorf("primary GPT header says it is at LBA %d, not 1", my)
	}
	if alt := le.Uint64(hdr[gptspec.GPTHdrAltLBA:]); alt != uint64(last) {
		return nil, fmt.Errorf("primary GPT header puts the backup at LBA %d but the last sector is %d: the image was resized (sgdisk -e moves the backup)", alt, last)
	}
	n, esz := le.Uint32(hdr[gptspec.GPTHdrNumEntries:]), le.Uint32(hdr[gptspec.GPTHdrEntrySize:])
	if esz < 128 || esz&(esz-1) != 0 || n == 0 || uint64(n)*uint64(esz) > maxGPTEntries {
		return nil, fmt.Errorf("primary GPT header describes %d entries of %d bytes: want entries of 128 bytes times a power of 2, at most %d bytes in all", n, esz, maxGPTEntries)
	}
	arrayBytes := int64(n) * int64(esz)
	arraySectors := (arrayBytes + gptspec.SectorSize - 1) / gptspec.SectorSize
	entriesLBA := int64(le.Uint64(hdr[gptspec.GPTHdrEntriesLBA:]))
	firstUsable, lastUsable := int64(le.Uint64(hdr[gptspec.GPTHdrFirstUsable:])), int64(le.Uint64(hdr[gptspec.GPTHdrLastUsable:]))
	backupEntriesLBA := last - arraySectors
	if entriesLBA < 2 || entriesLBA+arraySectors > firstUsable || firstUsable > lastUsable || lastUsable >= backupEntriesLBA {
		return nil, fmt.Errorf("primary GPT areas overlap: entries at LBA %d..%d, usable LBA %d..%d, backup entries from LBA %d",
			entriesLBA, entriesLBA+arraySectors-1, firstUsable, lastUsable, backupEntriesLBA)
	}
	entries := make([]byte, arrayBytes)
	if err := readAt(f, entries, entriesLBA*gptspec.SectorSize); err != nil {
		return nil, err
	}
	if got, want := crc32.ChecksumIEEE(entries), le.Uint32(hdr[gptspec.GPTHdrEntriesCRC:]); got != want {
		return nil, fmt.Errorf("primary GPT partition entries CRC32 is %08x but the header records %08x: the entry array is corrupt", got, want)
	}
	oldBackupHdr, oldBackupEntries := make([]byte, gptspec.SectorSize), make([]byte, arrayBytes)
	if err := readAt(f, oldBackupHdr, last*gptspec.SectorSize); err != nil {
		return nil, err
	}
	if err := readAt(f, oldBackupEntries, backupEntriesLBA*gptspec.SectorSize); err != nil {
		return nil, err
	}
	// What the backup should be before our changes: differences from it
	// are repairs, reported as such.
	staleHdr := !bytes.Equal(oldBackupHdr, backupHeader(hdr, size, last, backupEntriesLBA))
	staleEntries := !bytes.Equal(oldBackupEntries, entries)

	newHdr := bytes.Clone(hdr)
	diskGUID := gptspec.GUIDBytes(g.UUID(seedguid.DiskRole))
	copy(newHdr[gptspec.GPTHdrDiskGUID:], diskGUID[:])
	newEntries := bytes.Clone(entries)
	var fields []string
	if !bytes.Equal(hdr[gptspec.GPTHdrDiskGUID:gptspec.GPTHdrDiskGUID+16], diskGUID[:]) {
		fields = append(fields, "disk GUID")
	}
	for i := int64(0); i < int64(n); i++ {
		e := newEntries[i*int64(esz) : (i+1)*int64(esz)]
		if bytes.Equal(e[gptspec.GPTEntryTypeGUID:gptspec.GPTEntryTypeGUID+16], make([]byte, 16)) {
			continue // the nil type GUID marks an unused entry
		}
		u := gptspec.GUIDBytes(g.UUID(fmt.Sprintf("partition-%d", i+1)))
		if !bytes.Equal(e[gptspec.GPTEntryGUID:gptspec.GPTEntryGUID+16], u[:]) {
			copy(e[gptspec.GPTEntryGUID:], u[:])
			fields = append(fields, fmt.Sprintf("partition %d GUID", i+1))
		}
	}
	le.PutUint32(newHdr[gptspec.GPTHdrEntriesCRC:], crc32.ChecksumIEEE(newEntries))
	le.PutUint32(newHdr[gptspec.GPTHdrCRC:], gptspec.HeaderCRC(newHdr, size))

	if staleHdr {
		fields = append(fields, "backup GPT header")
	}
	if staleEntries {
		fields = append(fields, "backup GPT partition entries")
	}
	// The backup first: interrupted half-way, one of the two copies is
	// always consistent on its own, old or new.
	w.add(backupEntriesLBA*gptspec.SectorSize, oldBackupEntries, newEntries)
	w.add(last*gptspec.SectorSize, oldBackupHdr, backupHeader(newHdr, size, last, backupEntriesLBA))
	w.add(entriesLBA*gptspec.SectorSize, entries, newEntries)
	w.add(gptspec.SectorSize, hdr, newHdr)
	return fields, nil
}

// backupHeader is the backup sector for primary header hdr: the same
// header with its own and the alternate LBA swapped, entries just before
// it, and zeros after the header as sgdisk writes.
func backupHeader(hdr []byte, size uint32, last, entriesLBA int64) []byte {
	b := make([]byte, gptspec.SectorSize)
	copy(b, hdr[:size])
	le := binary.LittleEndian
	le.PutUint64(b[gptspec.GPTHdrMyLBA:], uint64(last))
	le.PutUint64(b[gptspec.GPTHdrAltLBA:], 1)
	le.PutUint64(b[gptspec.GPTHdrEntriesLBA:], uint64(entriesLBA))
	le.PutUint32(b[gptspec.GPTHdrCRC:], gptspec.HeaderCRC(b, size))
	return b
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
