package toplevel

import (
	"strings"
	"testing"
)

func TestBootMounts(t *testing.T) {
	fat := func(dev, point string, opts ...string) Mount { return Mount{dev, point, "vfat", opts} }
	root := Mount{"/dev/disk/by-label/nixos", "/", "ext4", nil}
	fstab := func(ms ...Mount) *System { return &System{Fstab: append([]Mount{root}, ms...)} }
	esp := func(p string) Want { return Want{p, FromFstab} }
	for name, tc := range map[string]struct {
		sys  *System
		want BootMounts
	}{
		"nothing known":   {&System{}, BootMounts{}},
		"fstab, no FAT":   {fstab(), BootMounts{Known: true}},
		"ESP on /boot":    {fstab(fat("/dev/vda1", "/boot")), BootMounts{Known: true, ESP: esp("/boot")}},
		"/boot then /efi": {fstab(fat("/dev/vda2", "/boot"), fat("/dev/vda1", "/efi")), BootMounts{true, esp("/efi"), esp("/boot")}},
		"/efi then /boot": {fstab(fat("/dev/vda1", "/efi"), fat("/dev/vda2", "/boot")), BootMounts{true, esp("/efi"), esp("/boot")}},
		"/boot and /boot/efi": {fstab(fat("/dev/vda2", "/boot"), fat("/dev/vda1", "/boot/efi")),
			BootMounts{true, esp("/boot/efi"), esp("/boot")}},
		// make-disk-image's labels settle it, whatever the mount points.
		"labels": {fstab(fat("/dev/disk/by-label/BOOT", "/a"), fat("PARTLABEL=ESP", "/b")), BootMounts{true, esp("/b"), esp("/a")}},
		"noauto is not mounted at boot": {fstab(fat("/dev/vda1", "/boot"), fat("/dev/sdb1", "/media/stick", "noauto")),
			BootMounts{Known: true, ESP: esp("/boot")}},
		"msdos": {fstab(Mount{"/dev/vda1", "/boot", "msdos", nil}), BootMounts{Known: true, ESP: esp("/boot")}},
		// The boot loader's settings come first; fstab agrees or adds.
		"systemd-boot and fstab agree": {&System{Fstab: []Mount{fat("/dev/vda1", "/efi")}, SystemdBoot: &SystemdBoot{ESP: "/efi", Boot: "/efi"}},
			BootMounts{Known: true, ESP: Want{"/efi", FromSystemdBoot}}},
		"GRUB EFI ESP": {&System{GRUB: []GRUB{{EFISysMountPoint: "/boot/efi", TargetEFI: "x86_64-efi"}}},
			BootMounts{Known: true, ESP: Want{"/boot/efi", FromGRUB}}},
		"GRUB BIOS: no ESP": {&System{GRUB: []GRUB{{Devices: []string{"/dev/sda"}, Target: "i386-pc", EFISysMountPoint: "/boot"}}},
			BootMounts{Known: true}},
		"GRUB mirrors on one ESP": {&System{GRUB: []GRUB{{EFISysMountPoint: "/boot", TargetEFI: "x86_64-efi"}, {EFISysMountPoint: "/boot", TargetEFI: "x86_64-efi"}}},
			BootMounts{Known: true, ESP: Want{"/boot", FromGRUB}}},
	} {
		got, err := tc.sys.BootMounts()
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", name, got, err, tc.want)
		}
	}
}

func TestBootMountsRefusesWhatNoImageHolds(t *testing.T) {
	fat := func(point string) Mount { return Mount{"/dev/x", point, "vfat", nil} }
	for name, tc := range map[string]struct {
		sys  *System
		want string
	}{
		"three FAT filesystems": {&System{Fstab: []Mount{fat("/efi"), fat("/boot"), fat("/data")}},
			"etc/fstab mounts FAT filesystems at /data besides the ESP (/efi) and XBOOTLDR (/boot)"},
		"GRUB mirrored onto two ESPs": {&System{GRUB: []GRUB{{EFISysMountPoint: "/boot1", TargetEFI: "x86_64-efi"}, {EFISysMountPoint: "/boot2", TargetEFI: "x86_64-efi"}}},
			"installs into 2 ESPs (/boot1, /boot2"},
		"relative":        {&System{Fstab: []Mount{fat("boot")}}, `etc/fstab: boot partition mount point "boot" is not a clean absolute path`},
		"unclean":         {&System{Fstab: []Mount{fat("/boot/../efi")}}, `"/boot/../efi" is not a clean absolute path`},
		"in the store":    {&System{SystemdBoot: &SystemdBoot{ESP: "/nix/store"}}, `systemd-boot's builder: boot partition mount point "/nix/store"`},
		"the root":        {&System{GRUB: []GRUB{{EFISysMountPoint: "/", TargetEFI: "x86_64-efi"}}}, `grub-config.xml: boot partition mount point "/"`},
		"under /run":      {&System{Fstab: []Mount{fat("/run/esp")}}, `"/run/esp" is not a clean absolute path`},
		"XBOOTLDR alone?": {&System{Fstab: []Mount{{"/dev/disk/by-label/BOOT", "/boot", "vfat", nil}}}, "has an XBOOTLDR at /boot (etc/fstab) but no ESP"},
	} {
		if _, err := tc.sys.BootMounts(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v; want %q", name, err, tc.want)
		}
	}
}

// install-grub.pl installs GRUB's BIOS core only with a GRUB for it and a
// device other than "nodev"; for EFI only with a GRUB for EFI.
func TestGRUBTargets(t *testing.T) {
	for _, tc := range []struct {
		g         GRUB
		bios, efi bool
	}{
		{GRUB{Devices: []string{"/dev/sda"}}, false, false},
		{GRUB{Devices: []string{"/dev/sda"}, Target: "i386-pc"}, true, false},
		{GRUB{Devices: []string{"/dev/sda"}, Grub: "/nix/store/x-grub"}, true, false},
		{GRUB{Devices: []string{"nodev"}, Grub: "/nix/store/x-grub", Target: "i386-pc"}, false, false},
		{GRUB{Devices: []string{"nodev"}, TargetEFI: "x86_64-efi"}, false, true},
		{GRUB{Devices: []string{"/dev/sda"}, Target: "i386-pc", GrubEFI: "/nix/store/y-grub"}, true, true},
	} {
		if tc.g.BIOS() != tc.bios || tc.g.EFI() != tc.efi {
			t.Errorf("%+v: BIOS %v, EFI %v; want %v, %v", tc.g, tc.g.BIOS(), tc.g.EFI(), tc.bios, tc.efi)
		}
	}
}
