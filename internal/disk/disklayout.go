// Package disk plans and writes the partition tables of the six
// partitionTableType layouts of nixpkgs' nixos/lib/make-disk-image.nix.
//
// The offsets are those that make-disk-image's parted calls produce (parted
// 3.5, optimal alignment), so an image built by this plugin has its
// partitions where a make-disk-image image has them:
//
//	legacy       MBR:  1 root 0x83                 1 MiB .. end of disk
//	legacy+gpt   GPT:  1 "no-fs"   BIOS boot       1 MiB .. 2 MiB
//	                   2 "primary" Linux fs        2 MiB .. end
//	efi          GPT:  1 "ESP"     ESP             8 MiB .. bootEnd
//	                   2 "primary" Linux fs      bootEnd .. end
//	efixbootldr  GPT:  1 "ESP"     ESP             8 MiB .. 100 MiB
//	                   2 "BOOT"    XBOOTLDR      100 MiB .. bootEnd
//	                   3 "ROOT"    Linux fs      bootEnd .. end
//	hybrid       GPT:  1 "ESP"     ESP             8 MiB .. bootEnd
//	                   2 "no-fs"   BIOS boot     sector 34 .. sector 2048
//	                   3 "primary" Linux fs      bootEnd .. end
//	none         no table: the root filesystem is the whole disk
//
// bootEnd is make-disk-image's round_to_nearest(bootSize, 1 MiB), which is
// (bootSize / 1 MiB + 1) MiB: 257 MiB for the default 256 MiB. "end" is the
// last 1 MiB boundary at or before the end of the usable area, as parted's
// "100%" with optimal alignment gives: the end of the disk for MBR, and one
// MiB short of it for GPT (the backup GPT takes the last 33 sectors).
//
// The package knows nothing of Packer or Nix; it takes plain values and an
// *os.File.
package disk

import (
	"fmt"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/seedguid"
)

// Sizes used throughout, in bytes.
const (
	SectorSize = gptspec.SectorSize
	MiB        = 1 << 20

	// DefaultBootSize is make-disk-image's bootSize default ("256M").
	DefaultBootSize = 256 * MiB
	// DefaultXBootLdrSize is the XBOOTLDR size make-disk-image gives
	// efixbootldr with the default bootSize: 100 MiB .. 257 MiB.
	DefaultXBootLdrSize = 257*MiB - xbootldrStart
	// DefaultRootGUID is make-disk-image's rootGPUID default.
	DefaultRootGUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"

	espStart      = 8 * MiB   // "mkpart ESP fat32 8MiB ..."
	xbootldrStart = 100 * MiB // efixbootldr: "mkpart ESP fat32 8MiB 100MiB"

	gptEntriesSectors = 32 // 128 entries of 128 bytes
	gptFirstUsableLBA = 2 + gptEntriesSectors
	gptTrailer        = (gptEntriesSectors + 1) * SectorSize // backup array + header
	maxMBRSectors     = 1<<32 - 1
)

// GPT partition type GUIDs, as parted sets them for make-disk-image's flags.
const (
	TypeBIOSBoot  = "21686148-6449-6E6F-744E-656564454649" // parted "set N bios_grub on"
	TypeESP       = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" // parted "set N boot on" on GPT
	TypeXBootLdr  = "BC13C2FF-59E6-4262-A352-B275FD6F7172" // parted "set N bls_boot on"
	TypeLinuxData = "0FC63DAF-8483-4772-8E79-3D69D8477DE4" // parted's type for ext4
)

// MBR partition type bytes. For GPT partitions they are gdisk's one-byte
// equivalents (the high byte of its hex code), used when mirrored into a
// hybrid MBR.
const (
	MBRTypeLinux        byte = 0x83
	MBRTypeEFI          byte = 0xEF
	MBRTypeXBootLdr     byte = 0xEA
	MBRTypeGPTProtector byte = gptspec.MBRTypeGPTProtector
)

// Type is make-disk-image's partitionTableType.
type Type string

// The six layouts.
const (
	Legacy      Type = "legacy"
	LegacyGPT   Type = "legacy+gpt"
	EFI         Type = "efi"
	EFIXBootLdr Type = "efixbootldr"
	Hybrid      Type = "hybrid"
	None        Type = "none"
)

// Types lists the layouts in make-disk-image's order.
var Types = []Type{Legacy, LegacyGPT, EFI, EFIXBootLdr, Hybrid, None}

func allowedTypes() string {
	s := make([]string, len(Types))
	for i, t := range Types {
		s[i] = fmt.Sprintf("%q", string(t))
	}
	return strings.Join(s, ", ")
}

// ParseType returns the layout named s (exact, case-sensitive as in nixpkgs).
func ParseType(s string) (Type, error) {
	for _, t := range Types {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("unknown partition table type %q: allowed values are %s", s, allowedTypes())
}

func (t Type) String() string { return string(t) }

// IsGPT reports whether the layout has a GUID partition table.
func (t Type) IsGPT() bool {
	return t == LegacyGPT || t == EFI || t == EFIXBootLdr || t == Hybrid
}

// BIOS reports whether the layout is booted by a PC BIOS (GRUB in the MBR
// gap or a BIOS boot partition).
func (t Type) BIOS() bool {
	return t == Legacy || t == LegacyGPT || t == Hybrid
}

// HasBootSize reports whether make-disk-image's bootSize affects the layout.
func (t Type) HasBootSize() bool {
	return t == EFI || t == EFIXBootLdr || t == Hybrid
}

// Role says what a partition is for.
type Role int

// Partition roles.
const (
	RoleRoot Role = iota
	RoleESP
	RoleXBootLdr
	RoleBIOSBoot
)

func (r Role) String() string {
	switch r {
	case RoleRoot:
		return "root"
	case RoleESP:
		return "ESP"
	case RoleXBootLdr:
		return "XBOOTLDR"
	case RoleBIOSBoot:
		return "BIOS boot"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// Partition is one entry of the partition table.
type Partition struct {
	Role     Role
	Name     string // GPT partition name as make-disk-image sets it ("" for MBR)
	Start    int64  // bytes from disk start
	Size     int64  // bytes
	TypeGUID string // GPT partition type ("" for the legacy MBR layout)
	MBRType  byte   // MBR type byte (legacy) or its gdisk equivalent (GPT)
	GUID     string // unique partition GUID, upper case ("" for MBR)
	// Attributes are the GPT attribute bits. make-disk-image sets no
	// attribute flag (it never uses parted's legacy_boot), so they are 0.
	Attributes uint64
	// Bootable is the MBR active flag. make-disk-image sets none: parted's
	// "boot" flag is only used on GPT, where it means the ESP type.
	Bootable bool
}

// End returns the byte offset just past the partition.
func (p Partition) End() int64 { return p.Start + p.Size }

// FirstLBA returns the first sector of the partition.
func (p Partition) FirstLBA() int64 { return p.Start / SectorSize }

// LastLBA returns the last sector of the partition (inclusive).
func (p Partition) LastLBA() int64 { return p.End()/SectorSize - 1 }

// Options describe the disk to plan. Zero values mean make-disk-image's
// defaults where it has one.
type Options struct {
	Type Type

	// BootSize is make-disk-image's bootSize, in bytes (0 = 256 MiB). Like
	// make-disk-image it is not a size but fixes where the boot partitions
	// end: bootEnd = (BootSize/1MiB + 1) MiB (round_to_nearest adds a MiB
	// even to an exact multiple).
	//   efi, hybrid:  ESP = 8 MiB .. bootEnd; BootSize must be >= 8 MiB.
	//   efixbootldr:  XBOOTLDR = 100 MiB .. bootEnd; BootSize must be >=
	//                 100 MiB; not together with XBootLdrSize.
	//   others:       must be 0 (they have no boot partition).
	BootSize int64
	// XBootLdrSize is the size of efixbootldr's XBOOTLDR partition, rounded
	// up to 1 MiB (0 = make-disk-image's: up to bootEnd, 157 MiB by
	// default). Only for efixbootldr, and not together with BootSize.
	XBootLdrSize int64
	// RootSize is the number of bytes the root filesystem needs.
	RootSize int64
	// DiskSize is 0 for the smallest disk holding RootSize (rounded up to
	// 1 MiB, as make-disk-image's auto size is), or the fixed disk size:
	// the root partition then takes the rest of the disk.
	DiskSize int64
	// DiskGUID is the GPT disk GUID ("" = derived from Seed). GPT only.
	DiskGUID string
	// RootGUID is the root partition's unique GUID ("" = DefaultRootGUID).
	// Ignored by legacy and none, which have no GUIDs.
	RootGUID string
	// Seed derives every other GUID and the MBR disk signature (RFC 4122
	// version 5 UUIDs named by role and seed). Same seed, same disk.
	Seed []byte
	// HybridMBR writes, for the hybrid layout only, an sgdisk
	// --hybrid=1:3 style MBR (0xEE, then the ESP as 0xEF and the root as
	// 0x83) instead of the protective MBR. make-disk-image itself writes
	// only a protective MBR for hybrid (parted mklabel gpt); its "hybrid"
	// means BIOS boot + ESP on one GPT disk.
	HybridMBR bool
}

// Layout is a planned disk.
type Layout struct {
	Type         Type
	DiskSize     int64
	Partitions   []Partition // in table order
	DiskGUID     string      // GPT disk GUID, "" without GPT
	MBRSignature uint32      // MBR disk signature (bytes 440..443), 0 for none
	HybridMBR    bool
}

// Root returns the root partition; for none, the whole disk.
func (l *Layout) Root() Partition {
	if p, ok := l.Find(RoleRoot); ok {
		return p
	}
	return Partition{Role: RoleRoot, Start: 0, Size: l.DiskSize}
}

// Find returns the partition with role r.
func (l *Layout) Find(r Role) (Partition, bool) {
	for _, p := range l.Partitions {
		if p.Role == r {
			return p, true
		}
	}
	return Partition{}, false
}

func roundUp(n, m int64) int64   { return (n + m - 1) / m * m }
func alignDown(n, m int64) int64 { return n / m * m }

// bootEnd is make-disk-image's round_to_nearest(bootSize, mebibyte).
func bootEnd(bootSize int64) int64 { return (bootSize/MiB + 1) * MiB }

func checkSize(what string, v int64, zeroOK bool) error {
	switch {
	case v < 0 || (v == 0 && !zeroOK):
		return fmt.Errorf("%s %d bytes is invalid: it must be a positive multiple of %d bytes", what, v, SectorSize)
	case v%SectorSize != 0:
		return fmt.Errorf("%s %d bytes is not a multiple of the %d-byte sector size", what, v, SectorSize)
	}
	return nil
}

// Plan computes the layout; it does no I/O.
func Plan(o Options) (*Layout, error) {
	t, err := ParseType(string(o.Type))
	if err != nil {
		return nil, err
	}
	if err := checkSize("root size", o.RootSize, false); err != nil {
		return nil, err
	}
	if err := checkSize("disk size", o.DiskSize, true); err != nil {
		return nil, err
	}
	if err := checkSize("boot size", o.BootSize, true); err != nil {
		return nil, err
	}
	if err := checkSize("XBOOTLDR size", o.XBootLdrSize, true); err != nil {
		return nil, err
	}
	if o.BootSize != 0 && !t.HasBootSize() {
		return nil, fmt.Errorf("boot size is set, but the %s layout has no boot partition: it applies only to efi, efixbootldr and hybrid", t)
	}
	if o.XBootLdrSize != 0 && t != EFIXBootLdr {
		return nil, fmt.Errorf("XBOOTLDR size is set, but the %s layout has no XBOOTLDR partition: it applies only to efixbootldr", t)
	}
	if o.XBootLdrSize != 0 && o.BootSize != 0 {
		return nil, fmt.Errorf("both boot size and XBOOTLDR size are set: for efixbootldr both place the XBOOTLDR end, set only one")
	}
	if o.HybridMBR && t != Hybrid {
		return nil, fmt.Errorf("a hybrid MBR was asked for the %s layout: it applies only to hybrid", t)
	}
	if o.DiskGUID != "" && !t.IsGPT() {
		return nil, fmt.Errorf("disk GUID %q is set, but the %s layout has no GPT: it applies only to legacy+gpt, efi, efixbootldr and hybrid", o.DiskGUID, t)
	}
	bootSize := o.BootSize
	if bootSize == 0 {
		bootSize = DefaultBootSize
	}

	l := &Layout{Type: t, HybridMBR: o.HybridMBR}
	g := seedguid.Source{Seed: o.Seed}
	rootGUID := ""
	if t.IsGPT() {
		if l.DiskGUID, err = pickGUID(g, "disk GUID", o.DiskGUID, seedguid.DiskRole); err != nil {
			return nil, err
		}
		def := o.RootGUID
		if def == "" {
			def = DefaultRootGUID
		}
		if rootGUID, err = pickGUID(g, "root partition GUID", def, ""); err != nil {
			return nil, err
		}
	} else if o.RootGUID != "" {
		if _, err := normalizeGUID(o.RootGUID); err != nil {
			return nil, fmt.Errorf("root partition GUID: %w", err)
		}
	}
	if t != None {
		l.MBRSignature = g.MBRSignature()
	}

	// The partitions before the root one, and where the root one starts.
	var fixed []Partition
	var rootStart int64
	esp := func(end int64) Partition {
		return Partition{Role: RoleESP, Name: "ESP", Start: espStart, Size: end - espStart,
			TypeGUID: TypeESP, MBRType: MBRTypeEFI, GUID: g.GUID("esp")}
	}
	switch t {
	case Legacy:
		rootStart = 1 * MiB // mkpart primary ext4 1MiB 100%
	case LegacyGPT:
		// mkpart no-fs 1MB 2MB; set 1 bios_grub on (parted aligns to 1 MiB)
		fixed = []Partition{{Role: RoleBIOSBoot, Name: "no-fs", Start: 1 * MiB, Size: 1 * MiB,
			TypeGUID: TypeBIOSBoot, MBRType: MBRTypeEFI, GUID: g.GUID("biosboot")}}
		rootStart = 2 * MiB
	case EFI, Hybrid:
		if o.BootSize != 0 && o.BootSize < espStart {
			return nil, fmt.Errorf("boot size %d bytes is too small for %s: the ESP runs from 8 MiB to (boot size / 1 MiB + 1) MiB, so boot size must be at least %d bytes (8 MiB)", o.BootSize, t, int64(espStart))
		}
		rootStart = bootEnd(bootSize)
		fixed = []Partition{esp(rootStart)}
		if t == Hybrid {
			// mkpart no-fs 0 1024KiB: parted moves the start to the first
			// usable sector, 34, and ends it at sector 2048 inclusive.
			fixed = append(fixed, Partition{Role: RoleBIOSBoot, Name: "no-fs",
				Start: gptFirstUsableLBA * SectorSize, Size: (2049 - gptFirstUsableLBA) * SectorSize,
				TypeGUID: TypeBIOSBoot, MBRType: MBRTypeEFI, GUID: g.GUID("biosboot")})
		}
	case EFIXBootLdr:
		xbEnd := bootEnd(bootSize)
		if o.XBootLdrSize != 0 {
			xbEnd = xbootldrStart + roundUp(o.XBootLdrSize, MiB)
		} else if o.BootSize != 0 && o.BootSize < xbootldrStart {
			return nil, fmt.Errorf("boot size %d bytes is too small for efixbootldr: the XBOOTLDR partition runs from 100 MiB to (boot size / 1 MiB + 1) MiB, so boot size must be at least %d bytes (100 MiB)", o.BootSize, int64(xbootldrStart))
		}
		fixed = []Partition{esp(xbootldrStart), {Role: RoleXBootLdr, Name: "BOOT", Start: xbootldrStart,
			Size: xbEnd - xbootldrStart, TypeGUID: TypeXBootLdr, MBRType: MBRTypeXBootLdr, GUID: g.GUID("xbootldr")}}
		rootStart = xbEnd
	}

	// The smallest disk whose root partition holds RootSize.
	var minDisk int64
	switch {
	case t == None:
		minDisk = o.RootSize
	case t.IsGPT():
		minDisk = rootStart + roundUp(o.RootSize, MiB) + gptTrailer
	default:
		minDisk = rootStart + roundUp(o.RootSize, MiB)
	}
	l.DiskSize = o.DiskSize
	if l.DiskSize == 0 {
		l.DiskSize = roundUp(minDisk, MiB)
	} else if l.DiskSize < minDisk {
		return nil, fmt.Errorf("disk size %d bytes (%s) is too small: the %s layout needs at least %d bytes (%s) for a root filesystem of %d bytes",
			o.DiskSize, human(o.DiskSize), t, minDisk, human(minDisk), o.RootSize)
	}

	if t != None {
		usableEnd := l.DiskSize
		if t.IsGPT() {
			usableEnd -= gptTrailer
		}
		// parted's "100%" with optimal alignment: the last MiB boundary.
		rootEnd := alignDown(usableEnd, MiB)
		names := map[Type]string{Legacy: "", LegacyGPT: "primary", EFI: "primary", EFIXBootLdr: "ROOT", Hybrid: "primary"}
		root := Partition{Role: RoleRoot, Name: names[t], Start: rootStart, Size: rootEnd - rootStart,
			TypeGUID: TypeLinuxData, MBRType: MBRTypeLinux, GUID: rootGUID}
		if t == Legacy {
			root.TypeGUID = ""
		}
		l.Partitions = append(fixed, root)
	}

	if t == Legacy && l.DiskSize/SectorSize > maxMBRSectors {
		return nil, fmt.Errorf("disk size %d bytes (%s) is too large for the legacy (MBR) layout: MBR addresses at most %d bytes (2 TiB); use a GPT layout", l.DiskSize, human(l.DiskSize), int64(maxMBRSectors)*SectorSize)
	}
	if l.HybridMBR {
		for _, p := range l.mirrored() {
			if p.End()/SectorSize > maxMBRSectors {
				return nil, fmt.Errorf("the %s partition ends at %d bytes, beyond the 2 TiB an MBR entry can address: a hybrid MBR needs a disk of at most 2 TiB", p.Role, p.End())
			}
		}
	}
	if err := l.checkUnique(); err != nil {
		return nil, err
	}
	return l, nil
}

// checkUnique rejects a GUID given twice (e.g. RootGUID = DiskGUID): GPT
// tools treat duplicate unique GUIDs as corruption.
func (l *Layout) checkUnique() error {
	seen := map[string]string{}
	if l.DiskGUID != "" {
		seen[l.DiskGUID] = "the disk"
	}
	for _, p := range l.Partitions {
		if p.GUID == "" {
			continue
		}
		if other, dup := seen[p.GUID]; dup {
			return fmt.Errorf("GUID %s is used for both %s and the %s partition: every GUID must be unique", p.GUID, other, p.Role)
		}
		seen[p.GUID] = "the " + p.Role.String() + " partition"
	}
	return nil
}

func human(n int64) string {
	switch {
	case n%MiB == 0:
		return fmt.Sprintf("%d MiB", n/MiB)
	default:
		return fmt.Sprintf("%.2f MiB", float64(n)/MiB)
	}
}
