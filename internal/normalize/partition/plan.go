package partition

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"slices"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/seedguid"
)

// plan is what parse found in an image and what Normalize would write.
// Normalize and ReadPartitions both go through parse, so a partition list
// never comes from a table that was not checked whole.
type plan struct {
	table  string   // "gpt", "mbr" or "none"
	parts  []Extent // checked: inside the disk (GPT: the usable LBAs), disjoint
	fields []string // as NormalizeReport.Fields
	writes writes
	// owned are the byte ranges [start, end) that belong to the table
	// itself: the only ones a write may touch.
	owned [][2]int64
}

// owns reports whether the write x lies inside one owned range.
func (p *plan) owns(x region) bool {
	end := x.off + int64(len(x.data))
	return slices.ContainsFunc(p.owned, func(r [2]int64) bool { return x.off >= r[0] && end <= r[1] })
}

// minSectors is the smallest image that can hold a table: a GPT header is
// at LBA 1, and an MBR partition starts after sector 0 and ends inside the
// disk. Smaller images have no table ("none"); nothing is read past them.
const minSectors = 2

// parse reads and checks f's partition table and plans o's changes to it.
// It writes nothing.
func parse(f *os.File, o NormalizeOptions) (*plan, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sectors := st.Size() / gptspec.SectorSize
	if sectors < minSectors {
		return &plan{table: "none"}, nil
	}
	s0, s1 := make([]byte, gptspec.SectorSize), make([]byte, gptspec.SectorSize)
	if err := readAt(f, s0, 0); err != nil {
		return nil, err
	}
	if err := readAt(f, s1, gptspec.SectorSize); err != nil {
		return nil, err
	}
	table, err := classify(s0, s1)
	if err != nil {
		return nil, err
	}
	p := &plan{table: table}
	if table == "none" {
		return p, nil
	}
	sigAt := int64(gptspec.MBRSignatureOffset)
	p.owned = append(p.owned, [2]int64{sigAt, sigAt + 4})
	oldSig := s0[sigAt : sigAt+4]
	sig := oldSig
	if o.RederiveIDs {
		g := seedguid.Source{Seed: o.Seed}
		sig = binary.LittleEndian.AppendUint32(nil, g.MBRSignature())
		if !bytes.Equal(oldSig, sig) {
			p.fields = append(p.fields, "MBR disk signature")
		}
	}
	switch table {
	case "gpt":
		if err := p.gpt(f, s1, sectors, o); err != nil {
			return nil, err
		}
	case "mbr":
		if err := p.mbr(s0, sectors); err != nil {
			return nil, err
		}
	}
	// Sector 0 last, after the GPT, which matters more.
	p.writes.add(sigAt, oldSig, sig)
	return p, nil
}

// mbr lists the used primary entries of a DOS label, each inside the disk
// after sector 0 and none overlapping another.
func (p *plan) mbr(s0 []byte, sectors int64) error {
	le := binary.LittleEndian
	for i := 0; i < 4; i++ {
		e := mbrEntry(s0, i)
		// uint32 fields: the sum cannot overflow an int64.
		start, n := int64(le.Uint32(e[gptspec.MBREntryStartLBA:])), int64(le.Uint32(e[gptspec.MBREntrySectors:]))
		if e[gptspec.MBREntryType] == 0 || n == 0 {
			continue
		}
		if start < 1 || start+n > sectors {
			return fmt.Errorf("MBR entry %d spans sectors %d..%d, outside the disk's sectors 1..%d", i+1, start, start+n-1, sectors-1)
		}
		p.parts = append(p.parts, Extent{Number: i + 1, Start: start * gptspec.SectorSize, Size: n * gptspec.SectorSize})
	}
	return disjoint(p.parts, "MBR entry")
}

// gpt checks the primary GPT whose header is hdr (LBA 1), lists its used
// entries and queues the backup and then the primary rewritten.
func (p *plan) gpt(f *os.File, hdr []byte, sectors int64, o NormalizeOptions) error {
	le := binary.LittleEndian
	last := sectors - 1
	size := le.Uint32(hdr[gptspec.GPTHdrSize:])
	if size < gptspec.GPTHdrMinSize || size > gptspec.SectorSize {
		return fmt.Errorf("primary GPT header size %d is outside %d..%d bytes", size, gptspec.GPTHdrMinSize, gptspec.SectorSize)
	}
	if got, want := gptspec.HeaderCRC(hdr, size), le.Uint32(hdr[gptspec.GPTHdrCRC:]); got != want {
		return fmt.Errorf("primary GPT header CRC32 is %08x but the header records %08x: the header is corrupt", got, want)
	}
	if my := le.Uint64(hdr[gptspec.GPTHdrMyLBA:]); my != 1 {
		return fmt.Errorf("primary GPT header says it is at LBA %d, not 1", my)
	}
	if alt := le.Uint64(hdr[gptspec.GPTHdrAltLBA:]); alt != uint64(last) {
		return fmt.Errorf("primary GPT header puts the backup at LBA %d but the last sector is %d: the image was resized (sgdisk -e moves the backup)", alt, last)
	}
	n, esz := le.Uint32(hdr[gptspec.GPTHdrNumEntries:]), le.Uint32(hdr[gptspec.GPTHdrEntrySize:])
	if esz < 128 || esz&(esz-1) != 0 || n == 0 || uint64(n)*uint64(esz) > maxGPTEntries {
		return fmt.Errorf("primary GPT header describes %d entries of %d bytes: want entries of 128 bytes times a power of 2, at most %d bytes in all", n, esz, maxGPTEntries)
	}
	arrayBytes := int64(n) * int64(esz)
	arraySectors := (arrayBytes + gptspec.SectorSize - 1) / gptspec.SectorSize
	// Every LBA is compared with the last sector before any arithmetic, so
	// none of the sums and products below can overflow.
	lbas := map[string]uint64{
		"partition entries": le.Uint64(hdr[gptspec.GPTHdrEntriesLBA:]),
		"first usable":      le.Uint64(hdr[gptspec.GPTHdrFirstUsable:]),
		"last usable":       le.Uint64(hdr[gptspec.GPTHdrLastUsable:]),
	}
	for _, name := range []string{"partition entries", "first usable", "last usable"} {
		if lbas[name] > uint64(last) {
			return fmt.Errorf("primary GPT header's %s LBA %d lies beyond the last sector %d", name, lbas[name], last)
		}
	}
	entriesLBA, firstUsable, lastUsable := int64(lbas["partition entries"]), int64(lbas["first usable"]), int64(lbas["last usable"])
	backupEntriesLBA := last - arraySectors
	if entriesLBA < 2 || entriesLBA+arraySectors > firstUsable || firstUsable > lastUsable || lastUsable >= backupEntriesLBA {
		return fmt.Errorf("primary GPT areas overlap: entries at LBA %d..%d, usable LBA %d..%d, backup entries from LBA %d",
			entriesLBA, entriesLBA+arraySectors-1, firstUsable, lastUsable, backupEntriesLBA)
	}
	entries := make([]byte, arrayBytes)
	if err := readAt(f, entries, entriesLBA*gptspec.SectorSize); err != nil {
		return err
	}
	if got, want := crc32.ChecksumIEEE(entries), le.Uint32(hdr[gptspec.GPTHdrEntriesCRC:]); got != want {
		return fmt.Errorf("primary GPT partition entries CRC32 is %08x but the header records %08x: the entry array is corrupt", got, want)
	}
	for i := int64(0); i < int64(n); i++ {
		e := entries[i*int64(esz) : (i+1)*int64(esz)]
		if isZero(e[gptspec.GPTEntryTypeGUID : gptspec.GPTEntryTypeGUID+16]) {
			continue // the nil type GUID marks an unused entry
		}
		first, end := le.Uint64(e[gptspec.GPTEntryFirstLBA:]), le.Uint64(e[gptspec.GPTEntryLastLBA:])
		if first < uint64(firstUsable) || end > uint64(lastUsable) || first > end {
			return fmt.Errorf("GPT entry %d spans LBA %d..%d, not inside the usable LBA %d..%d", i+1, first, end, firstUsable, lastUsable)
		}
		// Both are now at most lastUsable < last: the products fit.
		p.parts = append(p.parts, Extent{Number: int(i) + 1, Start: int64(first) * gptspec.SectorSize, Size: int64(end-first+1) * gptspec.SectorSize})
	}
	if err := disjoint(p.parts, "GPT entry"); err != nil {
		return err
	}

	oldBackupHdr, oldBackupEntries := make([]byte, gptspec.SectorSize), make([]byte, arrayBytes)
	if err := readAt(f, oldBackupHdr, last*gptspec.SectorSize); err != nil {
		return err
	}
	if err := readAt(f, oldBackupEntries, backupEntriesLBA*gptspec.SectorSize); err != nil {
		return err
	}
	// What the backup should be before our changes: differences from it
	// are repairs, reported as such.
	staleHdr := !bytes.Equal(oldBackupHdr, backupHeader(hdr, size, last, backupEntriesLBA))
	staleEntries := !bytes.Equal(oldBackupEntries, entries)

	newHdr, newEntries := bytes.Clone(hdr), bytes.Clone(entries)
	if o.RederiveIDs {
		p.fields = append(p.fields, rederive(newHdr, newEntries, int(n), int(esz), seedguid.Source{Seed: o.Seed})...)
	}
	le.PutUint32(newHdr[gptspec.GPTHdrEntriesCRC:], crc32.ChecksumIEEE(newEntries))
	le.PutUint32(newHdr[gptspec.GPTHdrCRC:], gptspec.HeaderCRC(newHdr, size))
	if staleHdr {
		p.fields = append(p.fields, "backup GPT header")
	}
	if staleEntries {
		p.fields = append(p.fields, "backup GPT partition entries")
	}
	sec := func(lba int64) int64 { return lba * gptspec.SectorSize }
	p.owned = append(p.owned,
		[2]int64{sec(1), sec(2)},
		[2]int64{sec(entriesLBA), sec(entriesLBA + arraySectors)},
		[2]int64{sec(backupEntriesLBA), sec(sectors)})
	// The backup first: interrupted half-way, one of the two copies is
	// always consistent on its own, old or new.
	p.writes.add(sec(backupEntriesLBA), oldBackupEntries, newEntries)
	p.writes.add(sec(last), oldBackupHdr, backupHeader(newHdr, size, last, backupEntriesLBA))
	p.writes.add(sec(entriesLBA), entries, newEntries)
	p.writes.add(sec(1), hdr, newHdr)
	return nil
}

// rederive replaces the disk GUID in hdr and the unique GUID of every used
// entry with seed-derived ones and names the fields that changed.
func rederive(hdr, entries []byte, n, esz int, g seedguid.Source) []string {
	var fields []string
	diskGUID := gptspec.GUIDBytes(g.UUID(seedguid.DiskRole))
	if !bytes.Equal(hdr[gptspec.GPTHdrDiskGUID:gptspec.GPTHdrDiskGUID+16], diskGUID[:]) {
		copy(hdr[gptspec.GPTHdrDiskGUID:], diskGUID[:])
		fields = append(fields, "disk GUID")
	}
	for i := 0; i < n; i++ {
		e := entries[i*esz : (i+1)*esz]
		if isZero(e[gptspec.GPTEntryTypeGUID : gptspec.GPTEntryTypeGUID+16]) {
			continue
		}
		u := gptspec.GUIDBytes(g.UUID(fmt.Sprintf("partition-%d", i+1)))
		if !bytes.Equal(e[gptspec.GPTEntryGUID:gptspec.GPTEntryGUID+16], u[:]) {
			copy(e[gptspec.GPTEntryGUID:], u[:])
			fields = append(fields, fmt.Sprintf("partition %d GUID", i+1))
		}
	}
	return fields
}

// disjoint refuses a table two of whose partitions share a sector: which
// one owns the shared bytes is anyone's guess, so neither is touched.
func disjoint(parts []Extent, what string) error {
	s := slices.Clone(parts)
	slices.SortFunc(s, func(a, b Extent) int { return int(min(max(a.Start-b.Start, -1), 1)) })
	for i := 1; i < len(s); i++ {
		a, b := s[i-1], s[i]
		if b.Start < a.Start+a.Size {
			return fmt.Errorf("%s %d (sectors %d..%d) and %s %d (sectors %d..%d) overlap", what, a.Number,
				a.Start/gptspec.SectorSize, (a.Start+a.Size)/gptspec.SectorSize-1, what, b.Number,
				b.Start/gptspec.SectorSize, (b.Start+b.Size)/gptspec.SectorSize-1)
		}
	}
	return nil
}
