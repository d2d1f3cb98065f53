package disk

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
)

// MBREntry is one of the four primary entries of sector 0.
type MBREntry struct {
	Bootable bool
	Type     byte
	StartLBA uint32
	Sectors  uint32
}

// mirrored lists the GPT partitions a hybrid MBR repeats: the ESP and the
// root, as `sgdisk --hybrid=1:3`. The BIOS boot partition (sectors
// 34..2048) stays inside the 0xEE entry: nothing reads it through the MBR.
func (l *Layout) mirrored() []Partition {
	var out []Partition
	for _, r := range []Role{RoleESP, RoleRoot} {
		if p, ok := l.Find(r); ok {
			out = append(out, p)
		}
	}
	return out
}

// MBR returns the entries Write puts in sector 0: the legacy table, the
// protective 0xEE entry of a GPT disk, or a hybrid MBR; nil for none.
func (l *Layout) MBR() []MBREntry {
	switch {
	case l.Type == None:
		return nil
	case l.Type == Legacy:
		var out []MBREntry
		for _, p := range l.Partitions {
			out = append(out, MBREntry{Bootable: p.Bootable, Type: p.MBRType,
				StartLBA: uint32(p.FirstLBA()), Sectors: uint32(p.Size / SectorSize)})
		}
		return out
	case l.HybridMBR:
		// sgdisk puts 0xEE first and lets it run from sector 1 to the
		// sector before the first mirrored partition.
		m := l.mirrored()
		out := []MBREntry{{Type: MBRTypeGPTProtector, StartLBA: 1, Sectors: uint32(m[0].FirstLBA() - 1)}}
		for _, p := range m {
			out = append(out, MBREntry{Bootable: p.Bootable, Type: p.MBRType,
				StartLBA: uint32(p.FirstLBA()), Sectors: uint32(p.Size / SectorSize)})
		}
		return out
	default:
		// UEFI protective MBR: the whole disk after sector 0, capped at
		// what 32 bits hold.
		n := l.DiskSize/SectorSize - 1
		if n > maxMBRSectors {
			n = maxMBRSectors
		}
		return []MBREntry{{Type: MBRTypeGPTProtector, StartLBA: 1, Sectors: uint32(n)}}
	}
}

// chs encodes an LBA in the 255-head, 63-sector geometry, saturating at
// 1023/254/63 as sgdisk and fdisk do; nothing modern reads it.
func chs(lba uint32) (head, sector, cyl byte) {
	c := lba / (255 * 63)
	if c > 1023 {
		return 0xfe, 0xff, 0xff
	}
	h := (lba / 63) % 255
	s := lba%63 + 1
	return byte(h), byte(s) | byte((c>>8)&3)<<6, byte(c)
}

// Write writes the partition tables into f, which must already be exactly
// DiskSize bytes (a sparse file is fine). For GPT layouts go-diskfs writes
// the primary and backup GPT; sector 0 (protective or hybrid MBR, or the
// legacy table) is written with go-diskfs' mbr package, and the disk
// signature (bytes 440..443, which go-diskfs leaves alone) by us. The boot
// code area, bytes 0..439, is left as it is. For none nothing is written.
func (l *Layout) Write(f *os.File) error {
	if l.Type == None {
		return nil
	}
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	if st.Size() != l.DiskSize {
		return fmt.Errorf("disk image %s is %d bytes, but the layout was planned for %d bytes: size the file first", f.Name(), st.Size(), l.DiskSize)
	}

	if l.Type.IsGPT() {
		t := &gpt.Table{
			LogicalSectorSize:  SectorSize,
			PhysicalSectorSize: SectorSize,
			GUID:               l.DiskGUID,
			// We write sector 0 ourselves: go-diskfs' protective MBR
			// cannot be hybrid and overflows past 2 TiB.
			ProtectiveMBR: false,
		}
		for i, p := range l.Partitions {
			t.Partitions = append(t.Partitions, &gpt.Partition{
				Index:      i + 1,
				Start:      uint64(p.FirstLBA()),
				End:        uint64(p.LastLBA()),
				Type:       gpt.Type(p.TypeGUID),
				Name:       p.Name,
				GUID:       p.GUID,
				Attributes: p.Attributes,
			})
		}
		if err := t.Write(f, l.DiskSize); err != nil {
			return fmt.Errorf("writing GPT: %w", err)
		}
	} else {
		// A GPT left over in the file would make tools prefer it to our
		// MBR; parted's mklabel msdos wipes it too.
		zero := make([]byte, SectorSize)
		for _, off := range []int64{SectorSize, l.DiskSize - SectorSize} {
			if _, err := f.WriteAt(zero, off); err != nil {
				return fmt.Errorf("clearing old GPT header: %w", err)
			}
		}
	}

	mt := &mbr.Table{LogicalSectorSize: SectorSize, PhysicalSectorSize: SectorSize}
	for i, e := range l.MBR() {
		sh, ss, sc := chs(e.StartLBA)
		eh, es, ec := chs(e.StartLBA + e.Sectors - 1)
		mt.Partitions = append(mt.Partitions, &mbr.Partition{
			Index: i + 1, Bootable: e.Bootable, Type: mbr.Type(e.Type),
			Start: e.StartLBA, Size: e.Sectors,
			StartHead: sh, StartSector: ss, StartCylinder: sc,
			EndHead: eh, EndSector: es, EndCylinder: ec,
		})
	}
	if err := mt.Write(f, l.DiskSize); err != nil {
		return fmt.Errorf("writing MBR: %w", err)
	}
	// Disk signature, then the two reserved bytes (0: not copy-protected).
	var sig [6]byte
	binary.LittleEndian.PutUint32(sig[:4], l.MBRSignature)
	if _, err := f.WriteAt(sig[:], gptspec.MBRSignatureOffset); err != nil {
		return fmt.Errorf("writing MBR disk signature: %w", err)
	}
	return nil
}

// Create makes a new sparse image file of DiskSize bytes at path, refusing
// to replace an existing file, and writes the partition table into it. On
// error nothing is left at path.
func (l *Layout) Create(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating the disk image: %w", err)
	}
	if err = f.Truncate(l.DiskSize); err != nil {
		err = fmt.Errorf("sizing the disk image: %w", err)
	} else if err = l.Write(f); err != nil {
		err = fmt.Errorf("writing the partition table: %w", err)
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return f, nil
}
