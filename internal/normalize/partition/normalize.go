// Package partition checks the partition table (GPT or MBR) of a disk
// image that other tools made, repairs its backup GPT, optionally re-derives
// its identifiers, and lists its partitions; every byte it reads is
// untrusted.
package partition

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
)

// NormalizeOptions configure Normalize.
type NormalizeOptions struct {
	// RederiveIDs replaces the disk GUID, every partition's unique GUID
	// and the MBR disk signature with ones derived from Seed. It breaks
	// whatever the system refers to them by: root=PARTUUID=... (on an MBR
	// disk Linux builds it from the signature), /dev/disk/by-partuuid in
	// fstab, the boot entries in efi-vars.fd. Off, they are kept.
	RederiveIDs bool
	// Seed derives every identifier RederiveIDs writes, as
	// disk.Options.Seed does for disk.Plan. Same seed, same bytes.
	Seed []byte
}

// NormalizeReport says what Normalize found and changed.
type NormalizeReport struct {
	// Table is "gpt" (protective or hybrid MBR), "mbr" (legacy DOS
	// label) or "none" (no partition table, e.g. a bare filesystem, or an
	// image smaller than two sectors).
	Table string
	// Fields names what was rewritten, in this order: "MBR disk
	// signature", "disk GUID", "partition N GUID" (these three only with
	// RederiveIDs), "backup GPT header", "backup GPT partition entries".
	// Empty when the image already was normal.
	Fields []string
	// Partitions are the table's used entries, checked as ReadPartitions
	// checks them (Normalize changes no LBA).
	Partitions []Extent
}

// Normalize checks the partition table of f (an image with 512-byte
// sectors) and repairs a stale or missing backup GPT in place. Identifiers
// are kept unless o.RederiveIDs, because the installed system refers to
// them; with it, the identifiers that partitioning tools pick at random
// become ones derived from o.Seed, so that two builds of the same image are
// byte-identical:
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
// Nothing is written unless the whole table is sound: a primary GPT header
// or entry array with a wrong CRC32, a GPT whose backup location is not the
// last sector (a resized image), a GPT without a protective MBR, sector 0
// with partition entries but no 0x55AA signature, a header LBA beyond the
// disk, a partition outside the usable LBAs (GPT) or the disk (MBR), or two
// partitions that overlap are refused. Every write is checked to lie in the
// table's own sectors before the first one is made.
func Normalize(f *os.File, o NormalizeOptions) (NormalizeReport, error) {
	r, err := normalize(f, o)
	if err != nil {
		err = fmt.Errorf("normalizing %s: %w", f.Name(), err)
	}
	return r, err
}

func normalize(f *os.File, o NormalizeOptions) (NormalizeReport, error) {
	p, err := parse(f, o)
	if err != nil {
		return NormalizeReport{}, err
	}
	r := NormalizeReport{Table: p.table, Fields: p.fields, Partitions: p.parts}
	for _, x := range p.writes {
		if !p.owns(x) {
			return NormalizeReport{}, fmt.Errorf("internal error: a write to bytes %d..%d lies outside the partition table's sectors", x.off, x.off+int64(len(x.data))-1)
		}
	}
	for _, x := range p.writes {
		if _, err := f.WriteAt(x.data, x.off); err != nil {
			return r, fmt.Errorf("writing: %w", err)
		}
	}
	if len(p.writes) > 0 {
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
