package nixos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	nixtoplevel "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/toplevel"
)

// bootSpec is what a hand-written system says about its installation.
type bootSpec struct {
	fstab    string // etc/fstab, "" for none
	grubXML  string // the installer's grub-config.xml, "" for none
	builder  string // the installer's systemd-boot builder, "" for none
	bootJSON string // "" for none
	noLn     bool   // sw/bin has no ln and mkdir
}

// bootSystem writes a system in a store of its own (returned first, for
// stepResolveSystem.storeDir): a makeWrapper switch-to-configuration whose
// INSTALL_BOOTLOADER names an installer that names the spec's GRUB
// configuration or systemd-boot builder.
func bootSystem(t *testing.T, spec bootSpec) (store, top string) {
	t.Helper()
	store = filepath.Join(t.TempDir(), "nix", "store")
	n := 0
	storePath := func(name string) string {
		n++
		return filepath.Join(store, fmt.Sprintf("%032d-%s", n, name))
	}
	write := func(p, content string) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	top = storePath("nixos-system-test")
	script := "#!/bin/sh\n"
	if spec.grubXML != "" {
		script += "perl install-grub.pl " + write(storePath("grub-config.xml"), spec.grubXML) + " $@\n"
	}
	if spec.builder != "" {
		script += write(filepath.Join(storePath("systemd-boot"), "bin", "systemd-boot"), spec.builder) + " \"$@\"\n"
	}
	installer := write(storePath("install-bootloader.sh"), script)
	write(filepath.Join(top, "bin", "switch-to-configuration"), "#! /bin/sh -e\nexport INSTALL_BOOTLOADER='"+installer+"'\nexec stc \"$@\"\n")
	write(filepath.Join(top, "kernel"), "")
	write(filepath.Join(top, "activate"), "")
	if !spec.noLn {
		write(filepath.Join(top, "sw", "bin", "ln"), "")
		write(filepath.Join(top, "sw", "bin", "mkdir"), "")
	}
	if spec.fstab != "" {
		write(filepath.Join(top, "etc", "fstab"), "/dev/disk/by-label/nixos / ext4 x-initrd.mount 0 1\n"+spec.fstab)
	}
	if spec.bootJSON != "" {
		write(filepath.Join(top, "boot.json"), spec.bootJSON)
	}
	return store, top
}

// grubXML is a grub-config.xml in builtins.toXML's format.
func grubXML(devices []string, efiSysMountPoint string, canTouch bool, targetEFI string) string {
	var list strings.Builder
	for _, d := range devices {
		fmt.Fprintf(&list, "<string value=%q />", d)
	}
	target := "i386-pc"
	if slices.Equal(devices, []string{"nodev"}) {
		target = ""
	}
	return fmt.Sprintf(`<?xml version='1.0' encoding='utf-8'?>
<expr><attrs>
<attr name="bootPath"><string value="/boot" /></attr>
<attr name="canTouchEfiVariables"><bool value="%t" /></attr>
<attr name="devices"><list>%s</list></attr>
<attr name="efiSysMountPoint"><string value=%q /></attr>
<attr name="grubTarget"><string value=%q /></attr>
<attr name="grubTargetEfi"><string value=%q /></attr>
</attrs></expr>
`, canTouch, list.String(), efiSysMountPoint, target, targetEFI)
}

const (
	fstabESPBoot     = "/dev/disk/by-label/ESP /boot vfat umask=0077 0 2\n"
	fstabESPBootEFI  = "/dev/disk/by-label/ESP /boot/efi vfat umask=0077 0 2\n"
	fstabESPXBootLdr = "/dev/disk/by-label/BOOT /boot vfat umask=0077 0 2\n/dev/disk/by-label/ESP /efi vfat umask=0077 0 2\n"
	bootJSONSecrets  = `{"org.nixos.bootspec.v1": {"initrdSecrets": "/nix/store/x-append-initrd-secrets/bin/append-initrd-secrets"}, "org.nixos.specialisation.v1": {}}`
)

// resolve runs stepResolveSystem on a system written from spec, configured
// by raw (install mode).
func resolve(t *testing.T, spec bootSpec, raw map[string]interface{}) (*multistep.BasicStateBag, *testUI, func() error) {
	t.Helper()
	store, top := bootSystem(t, spec)
	raw["only_nix_store"] = false
	raw["system"] = ""
	raw["flake"] = "/src#host"
	c := prepared(t, raw)
	state, ui := newState(c)
	state.Put("nix", &fakeNix{system: top})
	step := &stepResolveSystem{storeDir: store}
	run := func() error {
		step.Run(context.Background(), state)
		if err, ok := state.GetOk("error"); ok {
			return err.(error)
		}
		return nil
	}
	return state, ui, run
}

// What the system wants and the layout or the installer VM cannot give
// stops the build before anything is written, saying what it expects and
// what the layout gives.
func TestStepResolveSystemRefusesBootTargets(t *testing.T) {
	grubBIOS := grubXML([]string{"/dev/sda"}, "/boot", false, "")
	grubEFI := grubXML([]string{"nodev"}, "/boot/efi", true, "x86_64-efi")
	for name, tc := range map[string]struct {
		spec bootSpec
		raw  map[string]interface{}
		want string
	}{
		"XBOOTLDR on efi": {bootSpec{fstab: fstabESPXBootLdr}, map[string]interface{}{"partition_table_type": "efi"},
			`the system mounts its ESP at /efi and XBOOTLDR at /boot (etc/fstab), but partition_table_type = "efi" has only an ESP; use "efixbootldr"`},
		"ESP on legacy": {bootSpec{fstab: fstabESPBoot}, map[string]interface{}{"partition_table_type": "legacy"},
			`the system mounts its ESP at /boot (etc/fstab), but partition_table_type = "legacy" has no ESP (an MBR and the root partition); use "efi" or "hybrid"`},
		"ESP on none": {bootSpec{fstab: fstabESPBootEFI}, map[string]interface{}{"partition_table_type": "none"},
			`the system mounts its ESP at /boot/efi (etc/fstab), but partition_table_type = "none" has no partitions`},
		"no XBOOTLDR on efixbootldr": {bootSpec{fstab: fstabESPBoot}, map[string]interface{}{"partition_table_type": "efixbootldr"},
			`the system mounts its ESP at /boot and no XBOOTLDR (etc/fstab), but partition_table_type = "efixbootldr" has an ESP and an XBOOTLDR partition; use "efi" or "hybrid"`},
		"systemd-boot's ESP on legacy+gpt": {bootSpec{builder: "EFI_SYS_MOUNT_POINT = Path(\"/efi\")\nBOOT_MOUNT_POINT = Path(\"/efi\")\n"},
			map[string]interface{}{"partition_table_type": "legacy+gpt"},
			`the system mounts its ESP at /efi (systemd-boot's builder), but partition_table_type = "legacy+gpt" has no ESP`},
		"GRUB BIOS on efi": {bootSpec{fstab: "\n", grubXML: grubBIOS}, map[string]interface{}{"partition_table_type": "efi"},
			`the system mounts no ESP or XBOOTLDR (etc/fstab), and installs GRUB for BIOS onto /dev/sda (grub-config.xml), but partition_table_type = "efi" has only an ESP, no BIOS boot partition; use "legacy" or "legacy+gpt"`},
		"GRUB BIOS and ESP on efixbootldr": {bootSpec{fstab: fstabESPBoot, grubXML: grubBIOS}, map[string]interface{}{"partition_table_type": "efixbootldr"},
			`the system mounts its ESP at /boot and no XBOOTLDR (etc/fstab), and installs GRUB for BIOS onto /dev/sda (grub-config.xml), but partition_table_type = "efixbootldr" has an ESP and an XBOOTLDR partition, no BIOS boot partition; use "hybrid"`},
		"GRUB EFI without EFI variables": {bootSpec{fstab: fstabESPBootEFI, grubXML: grubEFI}, map[string]interface{}{"partition_table_type": "efi"},
			"boot.loader.efi.canTouchEfiVariables = true (grub-config.xml), so it registers its boot entry in the firmware's EFI variables, but touch_efi_vars = false gives the installer VM none and GRUB's installation fails; " +
				"set touch_efi_vars = true (the variables are kept as efi-vars.fd), or build the system with boot.loader.efi.canTouchEfiVariables = false and boot.loader.grub.efiInstallAsRemovable = true"},
		"initrd secrets": {bootSpec{fstab: fstabESPBoot, bootJSON: bootJSONSecrets}, map[string]interface{}{"partition_table_type": "efi"},
			"the system has initrd secrets (boot.initrd.secrets; initrdSecrets in boot.json): installing the boot loader appends them"},
		"a GRUB device outside /dev": {bootSpec{grubXML: grubXML([]string{"/tmp/disk"}, "/boot", false, "")}, map[string]interface{}{},
			`the system's GRUB installs onto "/tmp/disk" (boot.loader.grub.devices, grub-config.xml), not a whole-disk device under /dev`},
		"a partition of the VM's disk": {bootSpec{grubXML: grubXML([]string{"/dev/vda1"}, "/boot", false, "")}, map[string]interface{}{},
			`installs onto "/dev/vda1"`},
		"no ln to link the device": {bootSpec{grubXML: grubBIOS, noLn: true}, map[string]interface{}{},
			"the system's GRUB installs onto /dev/sda (grub-config.xml), which the installer links to the VM's disk with the system's own sw/bin/mkdir and sw/bin/ln, but the system has no such programs"},
		"a malformed fstab": {bootSpec{fstab: "/dev/vda1 /boot\n"}, map[string]interface{}{},
			"etc/fstab: line 2: 2 fields"},
		"three FAT filesystems": {bootSpec{fstab: fstabESPXBootLdr + "/dev/vdb1 /data vfat defaults 0 2\n"}, map[string]interface{}{},
			"flake: etc/fstab mounts FAT filesystems at /data besides the ESP (/efi) and XBOOTLDR (/boot)"},
	} {
		t.Run(name, func(t *testing.T) {
			_, ui, run := resolve(t, tc.spec, tc.raw)
			err := run()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want %q", err, tc.want)
			}
			if !strings.Contains(ui.errs.String(), tc.want) {
				t.Errorf("the user was told %q", ui.errs)
			}
		})
	}
}

// The same wants, met: by the layout, by touch_efi_vars, or because the
// boot loader is not installed.
func TestStepResolveSystemAcceptsBootTargets(t *testing.T) {
	grubEFI := grubXML([]string{"nodev"}, "/boot/efi", true, "x86_64-efi")
	for name, tc := range map[string]struct {
		spec   bootSpec
		raw    map[string]interface{}
		mounts []bootMount
		say    string
	}{
		"XBOOTLDR on efixbootldr": {bootSpec{fstab: fstabESPXBootLdr}, map[string]interface{}{"partition_table_type": "efixbootldr"},
			[]bootMount{{disk.RoleESP, "efi"}, {disk.RoleXBootLdr, "boot"}}, "Boot: ESP on /efi, XBOOTLDR on /boot"},
		"ESP at /boot/efi on efi": {bootSpec{fstab: fstabESPBootEFI}, map[string]interface{}{"partition_table_type": "efi"},
			[]bootMount{{disk.RoleESP, "boot/efi"}}, "Boot: ESP on /boot/efi"},
		"GRUB BIOS on legacy+gpt": {bootSpec{fstab: "\n", grubXML: grubXML([]string{"/dev/sda"}, "/boot", false, "")},
			map[string]interface{}{"partition_table_type": "legacy+gpt"}, nil, "Boot: boot loader GRUB, GRUB for BIOS onto /dev/sda"},
		"GRUB BIOS on efi, not installed": {bootSpec{fstab: "\n", grubXML: grubXML([]string{"/dev/sda"}, "/boot", false, "")},
			map[string]interface{}{"partition_table_type": "efi", "install_bootloader": false}, nil, "The system mounts no ESP (etc/fstab): the layout's ESP is left empty."},
		"GRUB EFI with EFI variables": {bootSpec{fstab: fstabESPBootEFI, grubXML: grubEFI},
			withEFIVars(t, map[string]interface{}{"partition_table_type": "efi"}), []bootMount{{disk.RoleESP, "boot/efi"}}, "Boot: boot loader GRUB, ESP on /boot/efi"},
		"GRUB EFI, not installed": {bootSpec{fstab: fstabESPBootEFI, grubXML: grubEFI},
			map[string]interface{}{"partition_table_type": "efi", "install_bootloader": false}, []bootMount{{disk.RoleESP, "boot/efi"}}, "ESP on /boot/efi"},
		"initrd secrets, not installed": {bootSpec{fstab: fstabESPBoot, bootJSON: bootJSONSecrets},
			map[string]interface{}{"partition_table_type": "efi", "install_bootloader": false}, []bootMount{{disk.RoleESP, "boot"}}, "Boot: ESP on /boot"},
		"a system that does not say": {bootSpec{}, map[string]interface{}{"partition_table_type": "efixbootldr"},
			[]bootMount{{disk.RoleESP, "efi"}, {disk.RoleXBootLdr, "boot"}},
			"The system does not say where it mounts its boot partitions (no etc/fstab, a boot loader this plugin does not read): mounting the ESP on /efi and the XBOOTLDR on /boot, as make-disk-image does."},
	} {
		t.Run(name, func(t *testing.T) {
			state, ui, run := resolve(t, tc.spec, tc.raw)
			if err := run(); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(ui.out.String(), tc.say) {
				t.Errorf("the user was told %q; want %q", ui.out, tc.say)
			}
			c := state.Get("config").(*Config)
			if got := state.Get("system").(*toplevel).bootMounts(c.layout); !slices.Equal(got, tc.mounts) {
				t.Errorf("boot partitions mounted %v; want %v", got, tc.mounts)
			}
		})
	}
}

// Mount points inside others are mounted after them.
func TestBootMountsParentsFirst(t *testing.T) {
	sys := &toplevel{boot: nixtoplevel.BootMounts{Known: true,
		ESP: nixtoplevel.Want{Point: "/boot/efi"}, XBootLdr: nixtoplevel.Want{Point: "/boot"}}}
	want := []bootMount{{disk.RoleXBootLdr, "boot"}, {disk.RoleESP, "boot/efi"}}
	if got := sys.bootMounts(disk.EFIXBootLdr); !slices.Equal(got, want) {
		t.Errorf("mounts %v; want %v", got, want)
	}
	// A layout without the partitions mounts none of them.
	if got := sys.bootMounts(disk.Legacy); got != nil {
		t.Errorf("legacy mounts %v", got)
	}
}

// The skeleton has the boot partitions' mount points, each after its parent.
func TestSkeletonHasTheMountPoints(t *testing.T) {
	names := func(dirs ...string) []string {
		var out []string
		for _, e := range (&installTree{mountDirs: dirs}).skeleton() {
			out = append(out, e.name)
		}
		return out
	}
	base := []string{"boot", "dev", "etc", "etc/NIXOS", "nix", "nix/store", "nix/var", "proc", "root", "sys", "tmp"}
	if got := names("boot"); !slices.Equal(got, base) {
		t.Errorf("ESP on /boot: %q", got)
	}
	// boot's subtree before its sibling boot-efi, though "/" sorts after "-".
	want := []string{"boot", "boot/efi", "boot-efi", "dev", "efi", "etc", "etc/NIXOS", "mnt", "mnt/my esp", "nix", "nix/store", "nix/var", "proc", "root", "sys", "tmp"}
	if got := names("boot/efi", "efi", "boot-efi", "mnt/my esp"); !slices.Equal(got, want) {
		t.Errorf("skeleton %q; want %q", got, want)
	}
}
