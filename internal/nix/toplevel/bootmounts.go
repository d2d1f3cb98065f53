package toplevel

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// Want is a mount point the system wants, and which of its files says so.
type Want struct {
	Point string // "" when the system wants none
	From  string // "etc/fstab", "systemd-boot's builder", "grub-config.xml"
}

// BootMounts is where the system mounts its FAT boot partitions.
type BootMounts struct {
	// Known: the system said where (it has an etc/fstab, or its boot
	// loader's mount points were read). When false, ESP and XBootLdr are
	// empty because nothing was learnt, not because the system has none.
	Known         bool
	ESP, XBootLdr Want
}

// Where the values come from, as the builder's messages name them.
const (
	FromFstab       = "etc/fstab"
	FromSystemdBoot = "systemd-boot's builder"
	FromGRUB        = "grub-config.xml"
)

// fatTypes are the fstab types of a FAT filesystem.
var fatTypes = []string{"vfat", "msdos", "fat"}

// BootMounts works out where the system mounts its ESP and XBOOTLDR: the
// boot loader's own settings first (they are what its installer checks),
// then etc/fstab's FAT filesystems (what the booted system mounts). Of two
// FAT filesystems in fstab with no other hint, the one on /boot is the
// XBOOTLDR (make-disk-image's efixbootldr layout: ESP on /efi, XBOOTLDR on
// /boot); labels ESP and BOOT, as make-disk-image gives them, settle it too.
func (s *System) BootMounts() (BootMounts, error) {
	var b BootMounts
	if sb := s.SystemdBoot; sb != nil && sb.ESP != "" {
		b.Known = true
		b.ESP = Want{sb.ESP, FromSystemdBoot}
		if x := sb.XBootLdr(); x != "" {
			b.XBootLdr = Want{x, FromSystemdBoot}
		}
	}
	var grubESPs []string
	for _, g := range s.GRUB {
		b.Known = true
		if g.EFI() && !slices.Contains(grubESPs, g.EFISysMountPoint) {
			grubESPs = append(grubESPs, g.EFISysMountPoint)
		}
	}
	switch {
	case len(grubESPs) > 1:
		return b, fmt.Errorf("the system's GRUB installs into %d ESPs (%s, boot.loader.grub.mirroredBoots); an image has one", len(grubESPs), strings.Join(grubESPs, ", "))
	case len(grubESPs) == 1 && b.ESP.Point == "":
		b.ESP = Want{grubESPs[0], FromGRUB}
	}

	if s.Fstab != nil {
		b.Known = true
	}
	var rest []Mount
	for _, m := range s.Fstab {
		if !slices.Contains(fatTypes, m.FSType) || m.Has("noauto") || m.Point == b.ESP.Point || m.Point == b.XBootLdr.Point {
			continue
		}
		switch labelHint(m.Device) {
		case "ESP":
			if b.ESP.Point == "" {
				b.ESP = Want{m.Point, FromFstab}
				continue
			}
		case "BOOT":
			if b.XBootLdr.Point == "" {
				b.XBootLdr = Want{m.Point, FromFstab}
				continue
			}
		}
		rest = append(rest, m)
	}
	for len(rest) > 0 {
		switch {
		case b.ESP.Point == "":
			i := 0
			if b.XBootLdr.Point == "" && len(rest) > 1 && rest[0].Point == "/boot" {
				i = 1
			}
			b.ESP = Want{rest[i].Point, FromFstab}
			rest = slices.Delete(rest, i, i+1)
		case b.XBootLdr.Point == "":
			b.XBootLdr = Want{rest[0].Point, FromFstab}
			rest = rest[1:]
		default:
			var extra []string
			for _, m := range rest {
				extra = append(extra, m.Point)
			}
			return b, fmt.Errorf("etc/fstab mounts FAT filesystems at %s besides the ESP (%s) and XBOOTLDR (%s); an image has no partitions for them (mark them noauto)",
				strings.Join(extra, ", "), b.ESP.Point, b.XBootLdr.Point)
		}
	}
	if b.XBootLdr.Point != "" && b.ESP.Point == "" {
		return b, fmt.Errorf("the system has an XBOOTLDR at %s (%s) but no ESP", b.XBootLdr.Point, b.XBootLdr.From)
	}
	for _, w := range []Want{b.ESP, b.XBootLdr} {
		if w.Point != "" && !goodMountPoint(w.Point) {
			return b, fmt.Errorf("%s: boot partition mount point %q is not a clean absolute path outside /nix, /dev, /proc, /sys, /run and /tmp", w.From, w.Point)
		}
	}
	return b, nil
}

// labelHint is ESP or BOOT when the device names a filesystem or partition
// label make-disk-image gives the ESP or the XBOOTLDR partition.
func labelHint(dev string) string {
	for _, p := range []string{"/dev/disk/by-label/", "/dev/disk/by-partlabel/", "LABEL=", "PARTLABEL="} {
		if l, ok := strings.CutPrefix(dev, p); ok && (l == "ESP" || l == "BOOT") {
			return l
		}
	}
	return ""
}

// goodMountPoint refuses mount points an installer must not mount over.
func goodMountPoint(p string) bool {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return false
	}
	for _, bad := range []string{"/nix", "/dev", "/proc", "/sys", "/run", "/tmp"} {
		if p == bad || strings.HasPrefix(p, bad+"/") {
			return false
		}
	}
	return true
}
