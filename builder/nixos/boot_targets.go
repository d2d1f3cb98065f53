package nixos

import (
	"errors"
	"fmt"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	nixtoplevel "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/toplevel"
)

// checkBootTargets compares what the system wants from its installer with
// what the configuration gives, before the image is written or a VM boots:
// the boot partitions it mounts against partition_table_type, GRUB's BIOS
// core against the room the layout leaves it, and, when the boot loader is
// installed, what its installation needs of the installer VM. It returns
// notes for the user, and every problem in one error.
func (t *toplevel) checkBootTargets(c *Config) (notes []string, err error) {
	var errs []error
	installing := *c.InstallBootloader
	needs := t.layoutNeeds(installing)
	if !needs.met(c.layout) {
		errs = append(errs, fmt.Errorf("the system %s, but partition_table_type = %q %s; %s",
			t.wantsText(needs, c.layout), c.PartitionTableType, givesText(needs, c.layout), needs.suggest()))
	} else if hasESP(c.layout) && t.boot.Known && t.boot.ESP.Point == "" {
		notes = append(notes, fmt.Sprintf("The system mounts no ESP (%s): the layout's ESP is left empty.", t.bootFrom()))
	}
	if installing && t.wants != nil {
		for _, g := range t.wants.GRUB {
			if g.EFI() && g.CanTouchEFIVariables && !c.TouchEFIVars {
				errs = append(errs, errors.New("the system's GRUB installs for EFI with boot.loader.efi.canTouchEfiVariables = true (grub-config.xml), "+
					"so it registers its boot entry in the firmware's EFI variables, but touch_efi_vars = false gives the installer VM none and GRUB's installation fails; "+
					"set touch_efi_vars = true (the variables are kept as efi-vars.fd), or build the system with boot.loader.efi.canTouchEfiVariables = false "+
					"and boot.loader.grub.efiInstallAsRemovable = true, as NixOS's image builders do"))
				break
			}
		}
		devs, _ := t.grubBIOS()
		for _, d := range devs {
			if d != installerDisk && !goodDevice(d) {
				errs = append(errs, fmt.Errorf("the system's GRUB installs onto %q (boot.loader.grub.devices, grub-config.xml), not a whole-disk device under /dev; "+
					"the installer links each such device to the VM's disk, as make-disk-image does; name the disk, such as /dev/sda or /dev/vda", d))
			}
		}
		if links := t.deviceLinks(); len(links) > 0 && (!t.has("sw/bin/mkdir") || !t.has("sw/bin/ln")) {
			errs = append(errs, fmt.Errorf("the system's GRUB installs onto %s (grub-config.xml), which the installer links to the VM's disk with the system's own "+
				"sw/bin/mkdir and sw/bin/ln, but the system has no such programs (coreutils in environment.systemPackages)", strings.Join(links, ", ")))
		}
		if where := t.wants.InitrdSecrets; len(where) > 0 {
			errs = append(errs, fmt.Errorf("the system has initrd secrets (boot.initrd.secrets; initrdSecrets in %s): installing the boot loader appends them to the initrd "+
				"from files on the machine it runs on, which the installer VM does not have, and an image is no place for secrets; "+
				"remove boot.initrd.secrets and provide them on the installed machine, or set install_bootloader = false",
				strings.Join(where, ", ")))
		}
	}
	if !t.boot.Known && hasESP(c.layout) {
		var at []string
		for _, m := range t.bootMounts(c.layout) {
			at = append(at, fmt.Sprintf("%s on /%s", roleName(m.role), m.dir))
		}
		notes = append(notes, fmt.Sprintf("The system does not say where it mounts its boot partitions (no etc/fstab, %s): mounting the %s, as make-disk-image does.",
			t.loaderText(), strings.Join(at, " and the ")))
	}
	return notes, errors.Join(errs...)
}

// bootNeeds is what the system needs of the layout.
type bootNeeds struct {
	known       bool // the system says where its boot partitions go
	esp, xb     bool
	bios        bool     // GRUB's BIOS core is installed
	biosDevices []string // ...onto these
}

func (t *toplevel) layoutNeeds(installing bool) bootNeeds {
	n := bootNeeds{known: t.boot.Known, esp: t.boot.ESP.Point != "", xb: t.boot.XBootLdr.Point != ""}
	if installing {
		n.biosDevices, n.bios = t.grubBIOS()
	}
	return n
}

// met says whether layout gives the system what it needs: its ESP and
// XBOOTLDR, no XBOOTLDR it does not mount, and room for GRUB's BIOS core
// (after the MBR, or a BIOS boot partition on GPT).
func (n bootNeeds) met(l disk.Type) bool {
	if n.esp && !hasESP(l) || n.known && n.xb != (l == disk.EFIXBootLdr) {
		return false
	}
	return !n.bios || l == disk.Legacy || l == disk.LegacyGPT || l == disk.Hybrid
}

// suggest names the layouts that give exactly what the system needs.
func (n bootNeeds) suggest() string {
	var ok []string
	for _, exact := range []bool{true, false} {
		for _, l := range disk.Types {
			if n.met(l) && (!exact || hasESP(l) == n.esp) {
				ok = append(ok, fmt.Sprintf("%q", string(l)))
			}
		}
		if len(ok) > 0 {
			break
		}
	}
	switch len(ok) {
	case 0:
		return "no partition_table_type gives all of that"
	case 1:
		return "use " + ok[0]
	}
	return "use " + strings.Join(ok[:len(ok)-1], ", ") + " or " + ok[len(ok)-1]
}

// wantsText says what the system wants, naming the files that say so.
func (t *toplevel) wantsText(n bootNeeds, l disk.Type) string {
	var parts []string
	esp, xb := t.boot.ESP, t.boot.XBootLdr
	switch {
	case n.esp && n.xb && esp.From == xb.From:
		parts = append(parts, fmt.Sprintf("mounts its ESP at %s and XBOOTLDR at %s (%s)", esp.Point, xb.Point, esp.From))
	case n.esp && n.xb:
		parts = append(parts, fmt.Sprintf("mounts its ESP at %s (%s) and XBOOTLDR at %s (%s)", esp.Point, esp.From, xb.Point, xb.From))
	case n.esp && l == disk.EFIXBootLdr:
		parts = append(parts, fmt.Sprintf("mounts its ESP at %s and no XBOOTLDR (%s)", esp.Point, t.bootFrom()))
	case n.esp:
		parts = append(parts, fmt.Sprintf("mounts its ESP at %s (%s)", esp.Point, esp.From))
	case n.known && (hasESP(l) || !n.bios):
		parts = append(parts, fmt.Sprintf("mounts no ESP or XBOOTLDR (%s)", t.bootFrom()))
	}
	if n.bios {
		parts = append(parts, fmt.Sprintf("installs GRUB for BIOS onto %s (%s)", strings.Join(n.biosDevices, ", "), nixtoplevel.FromGRUB))
	}
	return strings.Join(parts, ", and ")
}

// givesText says what the layout has, as far as the system's needs go.
func givesText(n bootNeeds, l disk.Type) string {
	s := map[disk.Type]string{
		disk.Legacy:      "has no ESP (an MBR and the root partition)",
		disk.LegacyGPT:   "has no ESP (a BIOS boot partition and the root partition)",
		disk.EFI:         "has only an ESP",
		disk.EFIXBootLdr: "has an ESP and an XBOOTLDR partition",
		disk.Hybrid:      "has an ESP and a BIOS boot partition, no XBOOTLDR",
		disk.None:        "has no partitions (the filesystem is the whole disk)",
	}[l]
	if n.bios && (l == disk.EFI || l == disk.EFIXBootLdr) {
		s += ", no BIOS boot partition"
	}
	return s
}

// bootFrom names the file that says the system has no (more) boot
// partitions: its fstab, else its boot loader's settings.
func (t *toplevel) bootFrom() string {
	switch {
	case t.wants != nil && t.wants.Fstab != nil:
		return nixtoplevel.FromFstab
	case t.wants != nil && t.wants.SystemdBoot != nil:
		return nixtoplevel.FromSystemdBoot
	}
	return nixtoplevel.FromGRUB
}

// loaderText names the boot loader for a note.
func (t *toplevel) loaderText() string {
	if t.wants == nil || t.wants.Loader == nixtoplevel.LoaderUnknown {
		return "a boot loader this plugin does not read"
	}
	return t.wants.Loader.String() + " with settings this plugin does not read"
}

func roleName(r disk.Role) string {
	if r == disk.RoleXBootLdr {
		return "XBOOTLDR"
	}
	return "ESP"
}

// describe sums up, for the build's output, what the system wants.
func (t *toplevel) describe(layout disk.Type) string {
	var s []string
	if t.wants != nil && t.wants.Loader != nixtoplevel.LoaderUnknown {
		s = append(s, "boot loader "+t.wants.Loader.String())
	}
	if devs, ok := t.grubBIOS(); ok {
		s = append(s, "GRUB for BIOS onto "+strings.Join(devs, ", "))
	}
	for _, m := range t.bootMounts(layout) {
		s = append(s, roleName(m.role)+" on /"+m.dir)
	}
	return strings.Join(s, ", ")
}
