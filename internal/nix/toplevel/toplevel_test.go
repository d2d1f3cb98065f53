package toplevel

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Small hand-written toplevels in the formats NixOS 24.11–25.11 writes, in a
// store of their own under t.TempDir().

type testStore struct {
	t   *testing.T
	dir string
	n   int
}

func newStore(t *testing.T) *testStore {
	return &testStore{t: t, dir: filepath.Join(t.TempDir(), "nix", "store")}
}

// path is a new store path named name (nothing is written).
func (s *testStore) path(name string) string {
	s.n++
	return filepath.Join(s.dir, fmt.Sprintf("%032d", s.n)[:32]+"-"+name)
}

// write writes content at p (inside a store path), creating directories.
func (s *testStore) write(p, content string) string {
	s.t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// toplevel is a system whose switch-to-configuration is stc, with the
// given etc/fstab ("" for none, the etc tree a store path of its own as in
// NixOS) and boot.json ("" for none).
func (s *testStore) toplevel(stc, fstab, bootJSON string) string {
	s.t.Helper()
	top := s.path("nixos-system-test-25.05")
	s.write(filepath.Join(top, "bin", "switch-to-configuration"), stc)
	if fstab != "" {
		etc := s.path("etc")
		s.write(filepath.Join(etc, "etc", "fstab"), fstab)
		if err := os.Symlink(filepath.Join(etc, "etc"), filepath.Join(top, "etc")); err != nil {
			s.t.Fatal(err)
		}
	}
	if bootJSON != "" {
		s.write(filepath.Join(top, "boot.json"), bootJSON)
	}
	return top
}

func (s *testStore) read(top string) (*System, error) { return Reader{StoreDir: s.dir}.Read(top) }

// shellWrapper is switch-to-configuration as makeWrapper writes it.
func shellWrapper(installer string) string {
	return `#! /nix/store/00000000000000000000000000000000-bash-5.2p37/bin/bash -e
export OUT='/nix/store/11111111111111111111111111111111-nixos-system'
export TOPLEVEL='/nix/store/11111111111111111111111111111111-nixos-system'
export DISTRO_ID='nixos'
export INSTALL_BOOTLOADER='` + installer + `'
export LOCALE_ARCHIVE='/nix/store/22222222222222222222222222222222-glibc-locales/lib/locale/locale-archive'
exec -a "$0" "/nix/store/33333333333333333333333333333333-switch-to-configuration-ng/bin/.switch-to-configuration-wrapped"  "$@"
`
}

// binaryWrapper is switch-to-configuration as a makeBinaryWrapper ELF
// shows it to a byte scan: string literals among machine code, the setenv
// call kept whole for its perror message.
func binaryWrapper(installer string) string {
	return "\x7fELF\x02\x01\x01\x00\x00\x00" + strings.Repeat("\x90\x00\xff", 40) +
		"OUT\x00/nix/store/11111111111111111111111111111111-nixos-system\x00" +
		"INSTALL_BOOTLOADER\x00" + installer + "\x00" +
		`setenv("INSTALL_BOOTLOADER", "` + installer + `", 1)` + "\x00" + strings.Repeat("\x00\x13", 30)
}

// nixXML renders attrs as builtins.toXML does (attributes sorted by name).
func nixXML(attrs string) string {
	return "<?xml version='1.0' encoding='utf-8'?>\n<expr>\n  <attrs>\n" + attrs + "  </attrs>\n</expr>\n"
}

func grubConfigXML(devices []string, efiSysMountPoint string, canTouch bool, targetEFI string) string {
	var list strings.Builder
	for _, d := range devices {
		fmt.Fprintf(&list, "        <string value=%q />\n", d)
	}
	grub, target := "/nix/store/44444444444444444444444444444444-grub-2.12", "i386-pc"
	if len(devices) == 1 && devices[0] == "nodev" {
		grub, target = "", ""
	}
	grubEfi := ""
	if targetEFI != "" {
		grubEfi = "/nix/store/55555555555555555555555555555555-grub-2.12"
	}
	return nixXML(fmt.Sprintf(`    <attr name="bootPath">
      <string value="/boot" />
    </attr>
    <attr name="canTouchEfiVariables">
      <bool value="%t" />
    </attr>
    <attr name="configurationLimit">
      <int value="100" />
    </attr>
    <attr name="devices">
      <list>
%s      </list>
    </attr>
    <attr name="efiInstallAsRemovable">
      <bool value="false" />
    </attr>
    <attr name="efiSysMountPoint">
      <string value=%q />
    </attr>
    <attr name="extraGrubInstallArgs">
      <list>
      </list>
    </attr>
    <attr name="font">
      <null />
    </attr>
    <attr name="fullName">
      <string value="grub" />
    </attr>
    <attr name="grub">
      <string value=%q />
    </attr>
    <attr name="grubEfi">
      <string value=%q />
    </attr>
    <attr name="grubTarget">
      <string value=%q />
    </attr>
    <attr name="grubTargetEfi">
      <string value=%q />
    </attr>
    <attr name="users">
      <attrs>
      </attrs>
    </attr>
`, canTouch, list.String(), efiSysMountPoint, grub, grubEfi, target, targetEFI))
}

// grubSystem is a GRUB system whose installer names config.
func (s *testStore) grubSystem(wrap func(string) string, config, fstab string) string {
	xml := s.write(s.path("grub-config.xml"), config)
	installer := s.write(s.path("install-grub.sh"), "#!/nix/store/00000000000000000000000000000000-bash/bin/bash\nset -e\n"+
		"/nix/store/66666666666666666666666666666666-perl/bin/perl /nix/store/77777777777777777777777777777777-install-grub.pl "+xml+" $@\n")
	return s.toplevel(wrap(installer), fstab, "")
}

// systemdBootSystem is a systemd-boot system whose builder has builder's
// text.
func (s *testStore) systemdBootSystem(builder, fstab string) string {
	b := s.write(filepath.Join(s.path("systemd-boot"), "bin", "systemd-boot"), builder)
	installer := s.write(s.path("install-systemd-boot.sh"), "#!/nix/store/00000000000000000000000000000000-bash/bin/bash\n"+b+" \"$@\"\n")
	return s.toplevel(shellWrapper(installer), fstab, "")
}

// builder25 is the head of systemd-boot-builder.py as 25.05 bakes it.
func builder25(esp, boot, canTouch string) string {
	return fmt.Sprintf(`#! /nix/store/88888888888888888888888888888888-python3/bin/python3 -B
import argparse

# These values will be replaced with actual values during the package build
EFI_SYS_MOUNT_POINT = Path(%q)
BOOT_MOUNT_POINT = Path(%q)
LOADER_CONF = EFI_SYS_MOUNT_POINT / "loader/loader.conf"  # Always stored on the ESP
TIMEOUT = "5"
CAN_TOUCH_EFI_VARIABLES = %q
`, esp, boot, canTouch)
}

const fstabEFIXBootLdr = `# This is a generated file.  Do not edit!
#
# To make changes, edit the fileSystems and swapDevices NixOS options
# in your /etc/nixos/configuration.nix file.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>

# Filesystems.
/dev/disk/by-label/nixos / ext4 x-initrd.mount 0 1
/dev/disk/by-label/BOOT /boot vfat fmask=0022,dmask=0022 0 2
/dev/disk/by-label/ESP /efi vfat fmask=0022,dmask=0022 0 2


# Swap devices.

`

func TestParseFstab(t *testing.T) {
	got, err := ParseFstab([]byte(fstabEFIXBootLdr + "/dev/disk/by-label/my\\040data /srv/my\\040data\\011x ext4 defaults,nofail 0 2\n/dev/vda2 none swap\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{"/dev/disk/by-label/nixos", "/", "ext4", []string{"x-initrd.mount"}},
		{"/dev/disk/by-label/BOOT", "/boot", "vfat", []string{"fmask=0022", "dmask=0022"}},
		{"/dev/disk/by-label/ESP", "/efi", "vfat", []string{"fmask=0022", "dmask=0022"}},
		{"/dev/disk/by-label/my data", "/srv/my data\tx", "ext4", []string{"defaults", "nofail"}},
		{"/dev/vda2", "none", "swap", nil},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n  %q\nwant\n  %q", got, want)
	}
}

func TestParseFstabRefusesMalformedLines(t *testing.T) {
	for line, want := range map[string]string{
		"/dev/vda1 /boot":                        "line 2: 2 fields",
		"/dev/vda1 /boot vfat a b c d":           "line 2: 7 fields",
		"/dev/vda1 /bo\\ot vfat":                 "a backslash must start an octal escape",
		"/dev/vda1 /boot\\04 vfat":               "a backslash must start an octal escape",
		"/dev/vda1 /boot\\400 vfat":              "a backslash must start an octal escape",
		"/dev/vda1 /boot\\000 vfat defaults 0 2": "escapes a NUL",
	} {
		_, err := ParseFstab([]byte("# comment\n" + line + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v; want %q", line, err, want)
		}
	}
}

// A systemd-boot system (25.05's builder: Path("...")) behind a makeWrapper
// switch-to-configuration: the ESP and XBOOTLDR the builder has baked in.
func TestReadSystemdBoot(t *testing.T) {
	s := newStore(t)
	top := s.systemdBootSystem(builder25("/efi", "/boot", "1"), fstabEFIXBootLdr)
	sys, err := s.read(top)
	if err != nil {
		t.Fatal(err)
	}
	if sys.Loader != LoaderSystemdBoot || !strings.HasSuffix(sys.InstallBootloader, "-install-systemd-boot.sh") {
		t.Fatalf("loader %v, installer %q", sys.Loader, sys.InstallBootloader)
	}
	sb := sys.SystemdBoot
	if sb == nil || sb.ESP != "/efi" || sb.Boot != "/boot" || sb.XBootLdr() != "/boot" || !sb.CanTouchEFIVariables || !strings.HasSuffix(sb.Builder, "-systemd-boot/bin/systemd-boot") {
		t.Fatalf("systemd-boot %+v", sb)
	}
	b, err := sys.BootMounts()
	want := BootMounts{Known: true, ESP: Want{"/efi", FromSystemdBoot}, XBootLdr: Want{"/boot", FromSystemdBoot}}
	if err != nil || b != want {
		t.Errorf("boot mounts %+v, %v; want %+v", b, err, want)
	}
	if len(sys.Fstab) != 3 || sys.InitrdSecrets != nil {
		t.Errorf("fstab %v, initrd secrets %v", sys.Fstab, sys.InitrdSecrets)
	}
}

// 24.11's builder (plain strings), ESP only; a builder still holding its
// placeholders tells nothing, and fstab has the say.
func TestReadSystemdBootOlderAndUnsubstitutedBuilders(t *testing.T) {
	s := newStore(t)
	older := "EFI_SYS_MOUNT_POINT = \"/boot\"\nBOOT_MOUNT_POINT = \"/boot\"\nCAN_TOUCH_EFI_VARIABLES = \"\"\n"
	sys, err := s.read(s.systemdBootSystem(older, ""))
	if err != nil {
		t.Fatal(err)
	}
	if sb := sys.SystemdBoot; sb.ESP != "/boot" || sb.XBootLdr() != "" || sb.CanTouchEFIVariables {
		t.Errorf("systemd-boot %+v", sb)
	}
	if b, _ := sys.BootMounts(); b != (BootMounts{Known: true, ESP: Want{"/boot", FromSystemdBoot}}) {
		t.Errorf("boot mounts %+v", b)
	}

	placeholders := builder25("@efiSysMountPoint@", "@bootMountPoint@", "@canTouchEfiVariables@")
	sys, err = s.read(s.systemdBootSystem(placeholders, "/dev/disk/by-label/ESP /boot/efi vfat umask=0077 0 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	if sb := sys.SystemdBoot; sys.Loader != LoaderSystemdBoot || sb.ESP != "" || sb.Boot != "" {
		t.Errorf("loader %v, systemd-boot %+v", sys.Loader, sb)
	}
	if b, _ := sys.BootMounts(); b != (BootMounts{Known: true, ESP: Want{"/boot/efi", FromFstab}}) {
		t.Errorf("boot mounts %+v", b)
	}
}

// A BIOS GRUB behind a makeBinaryWrapper ELF: the devices it installs onto.
func TestReadGRUBBehindABinaryWrapper(t *testing.T) {
	s := newStore(t)
	top := s.grubSystem(binaryWrapper, grubConfigXML([]string{"/dev/sda", "/dev/disk/by-id/ata-X"}, "/boot", false, ""),
		"/dev/disk/by-label/nixos / ext4 defaults 0 1\n")
	sys, err := s.read(top)
	if err != nil {
		t.Fatal(err)
	}
	if sys.Loader != LoaderGRUB || len(sys.GRUB) != 1 || !strings.HasSuffix(sys.InstallBootloader, "-install-grub.sh") {
		t.Fatalf("loader %v, installer %q, GRUB %+v", sys.Loader, sys.InstallBootloader, sys.GRUB)
	}
	g := sys.GRUB[0]
	if !g.BIOS() || g.EFI() || !reflect.DeepEqual(g.BIOSDevices(), []string{"/dev/sda", "/dev/disk/by-id/ata-X"}) ||
		g.BootPath != "/boot" || g.Target != "i386-pc" || g.CanTouchEFIVariables || !strings.HasSuffix(g.Config, "-grub-config.xml") {
		t.Errorf("GRUB %+v", g)
	}
	if b, err := sys.BootMounts(); err != nil || b != (BootMounts{Known: true}) {
		t.Errorf("boot mounts %+v, %v; want known, none", b, err)
	}
}

// GRUB for EFI only (devices = [ "nodev" ]), allowed to write EFI variables.
func TestReadGRUBForEFI(t *testing.T) {
	s := newStore(t)
	sys, err := s.read(s.grubSystem(shellWrapper, grubConfigXML([]string{"nodev"}, "/boot/efi", true, "x86_64-efi"), ""))
	if err != nil {
		t.Fatal(err)
	}
	g := sys.GRUB[0]
	if g.BIOS() || !g.EFI() || !g.CanTouchEFIVariables || g.EFISysMountPoint != "/boot/efi" || g.BIOSDevices() != nil {
		t.Errorf("GRUB %+v", g)
	}
	if b, _ := sys.BootMounts(); b != (BootMounts{Known: true, ESP: Want{"/boot/efi", FromGRUB}}) {
		t.Errorf("boot mounts %+v", b)
	}
}

// A switch-to-configuration that names its installer without the variable
// (the Perl one), and one naming an installer this package does not read.
func TestReadInstallerWithoutTheVariableAndUnknownLoaders(t *testing.T) {
	s := newStore(t)
	config := grubConfigXML([]string{"/dev/vda"}, "/boot", false, "")
	perl := func(installer string) string {
		return "#! /nix/store/00000000000000000000000000000000-perl/bin/perl\nsystem(\"" + installer + " $out\") == 0 or exit 1;\n"
	}
	sys, err := s.read(s.grubSystem(perl, config, ""))
	if err != nil || sys.Loader != LoaderGRUB || len(sys.GRUB) != 1 {
		t.Errorf("Perl switch-to-configuration: %+v, %v", sys, err)
	}

	extlinux := s.write(s.path("extlinux-conf-builder.sh"), "#!/bin/sh\n")
	sys, err = s.read(s.toplevel(shellWrapper(extlinux), "", ""))
	if err != nil || sys.Loader != LoaderUnknown || sys.InstallBootloader != extlinux {
		t.Errorf("extlinux: %+v, %v", sys, err)
	}
	if b, _ := sys.BootMounts(); b.Known {
		t.Errorf("boot mounts %+v known without fstab or a known loader", b)
	}

	// Nothing after the variable but a path outside the store.
	sys, err = s.read(s.toplevel("export INSTALL_BOOTLOADER='/usr/bin/true'\n", "", ""))
	if err != nil || sys.InstallBootloader != "" || sys.Loader != LoaderUnknown {
		t.Errorf("no store path: %+v, %v", sys, err)
	}
}

// What is named but broken is an error naming the file.
func TestReadRefusesBrokenFiles(t *testing.T) {
	s := newStore(t)
	missing := s.path("install-grub.sh")
	bigFstab := strings.Repeat("# padding\n", maxText/10+1)
	cases := map[string]struct {
		top  string
		want string
	}{
		"missing installer": {s.toplevel(shellWrapper(missing), "", ""), "names " + missing + " as INSTALL_BOOTLOADER, which cannot be read"},
		"malformed XML":     {s.grubSystem(shellWrapper, "<expr><attrs><attr name=\"devices\">", ""), "-grub-config.xml: not a Nix XML expression"},
		"devices not a list": {s.grubSystem(shellWrapper, nixXML(`<attr name="devices"><string value="/dev/sda"/></attr>`), ""),
			`attribute "devices" is a string, want a list`},
		"bool where a string goes": {s.grubSystem(shellWrapper, nixXML(`<attr name="efiSysMountPoint"><bool value="true"/></attr>`), ""),
			`attribute "efiSysMountPoint" is a bool, want a string`},
		"not attrs":        {s.grubSystem(shellWrapper, "<?xml version='1.0'?><expr><list></list></expr>", ""), "holding one attribute set"},
		"malformed fstab":  {s.toplevel("", "/dev/vda1 /boot\n", ""), "etc/fstab: line 1: 2 fields"},
		"oversized fstab":  {s.toplevel("", bigFstab, ""), "etc/fstab is larger than 1024 KiB"},
		"malformed json":   {s.toplevel("", "", `{"org.nixos.bootspec.v1": {`), "boot.json: not a bootspec document"},
		"secrets not text": {s.toplevel("", "", `{"org.nixos.bootspec.v1": {"initrdSecrets": 1}}`), "boot.json: org.nixos.bootspec.v1: json: cannot unmarshal"},
	}
	for name, tc := range cases {
		if _, err := s.read(tc.top); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v; want %q", name, err, tc.want)
		}
	}
	// A directory where a file belongs.
	top := s.toplevel("", "", "")
	if err := os.MkdirAll(filepath.Join(top, "etc", "fstab"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := s.read(top); err == nil || !strings.Contains(err.Error(), "etc/fstab is not a regular file") {
		t.Errorf("fstab directory: error %v", err)
	}
}

// bootspec's initrdSecrets, in the system and in its specialisations.
func TestReadInitrdSecrets(t *testing.T) {
	s := newStore(t)
	v1 := func(secrets string) string {
		extra := ""
		if secrets != "" {
			extra = `, "initrdSecrets": "` + secrets + `"`
		}
		return `"org.nixos.bootspec.v1": {"init": "/nix/store/x/init", "initrd": "/nix/store/y/initrd", "kernel": "/nix/store/z/bzImage", "kernelParams": [], "label": "NixOS", "system": "x86_64-linux", "toplevel": "/nix/store/x"` + extra + `}`
	}
	for _, tc := range []struct {
		json string
		want []string
	}{
		{"{" + v1("") + `, "org.nixos.specialisation.v1": {}}`, nil},
		{"{" + v1("/nix/store/a-append-initrd-secrets/bin/append-initrd-secrets") + `, "org.nixos.specialisation.v1": {}}`, []string{"boot.json"}},
		{"{" + v1("") + `, "org.nixos.specialisation.v1": {"b": {` + v1("") + `, "org.nixos.specialisation.v1": {}}, "a": {` + v1("/s") +
			`, "org.nixos.specialisation.v1": {"inner": {` + v1("/t") + `}}}}}`,
			[]string{"boot.json (specialisation a)", "boot.json (specialisation a/inner)"}},
	} {
		sys, err := s.read(s.toplevel("", "", tc.json))
		if err != nil || !reflect.DeepEqual(sys.InitrdSecrets, tc.want) {
			t.Errorf("%s: initrd secrets %q, %v; want %q", tc.json, sys.InitrdSecrets, err, tc.want)
		}
	}
	deep := `{"org.nixos.specialisation.v1": {}}`
	for range maxSpecialisationDepth + 1 {
		deep = `{"org.nixos.specialisation.v1": {"x": ` + deep + `}}`
	}
	if _, err := s.read(s.toplevel("", "", deep)); err == nil || !strings.Contains(err.Error(), "nest deeper") {
		t.Errorf("deep specialisations: %v", err)
	}
}

// A toplevel that says nothing: no fstab, no switch-to-configuration.
func TestReadSaysNothing(t *testing.T) {
	top := t.TempDir()
	sys, err := Read(top)
	if err != nil || sys.Fstab != nil || sys.Loader != LoaderUnknown || sys.InstallBootloader != "" {
		t.Fatalf("%+v, %v", sys, err)
	}
	if b, err := sys.BootMounts(); err != nil || b.Known {
		t.Errorf("boot mounts %+v, %v", b, err)
	}
}
