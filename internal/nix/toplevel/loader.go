package toplevel

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"
)

// SystemdBoot is what systemd-boot's builder (systemd-boot-builder.py,
// built by nixos/modules/system/boot/loader/systemd-boot/systemd-boot.nix)
// has baked in. A value the builder does not show is "".
type SystemdBoot struct {
	Builder string // the builder's path (<store>/<hash>-systemd-boot/bin/systemd-boot)
	// ESP is boot.loader.efi.efiSysMountPoint; Boot is where entries go:
	// boot.loader.systemd-boot.xbootldrMountPoint, or the ESP.
	ESP, Boot string
	// CanTouchEFIVariables is boot.loader.efi.canTouchEfiVariables ("1" or "").
	CanTouchEFIVariables bool
}

// XBootLdr is the XBOOTLDR mount point, "" when entries go on the ESP.
func (s *SystemdBoot) XBootLdr() string {
	if s.Boot == "" || s.Boot == s.ESP {
		return ""
	}
	return s.Boot
}

// installBootloaderName is the variable switch-to-configuration reads the
// installer from (switchable-system.nix wraps switch-to-configuration-ng with
// it).
const installBootloaderName = "INSTALL_BOOTLOADER"

// installerNames are the store names nixpkgs gives the installers this
// package reads, for a switch-to-configuration that names its installer
// without the variable (the Perl one, before 24.11).
var installerNames = []string{"-install-grub.sh", "-install-systemd-boot.sh"}

// readLoader finds the installer switch-to-configuration runs and reads it.
func (r Reader) readLoader(s *System) error {
	rel := "bin/switch-to-configuration"
	stc, err := r.readFile(s.Path, rel, maxBinary)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	re := storePathRe(r.storeDir())
	s.InstallBootloader = findInstaller(stc, re)
	if s.InstallBootloader == "" {
		return nil
	}
	script, err := r.readFile("/", s.InstallBootloader, maxText)
	if err != nil {
		return fmt.Errorf("%s names %s as %s, which cannot be read: %w", path.Join(s.Path, rel), s.InstallBootloader, installBootloaderName, err)
	}
	var configs, builders []string
	for _, p := range re.FindAllString(string(script), -1) {
		switch {
		case !cleanStorePath(p):
		case strings.HasSuffix(p, "-grub-config.xml") && strings.Count(strings.TrimPrefix(p, r.storeDir()+"/"), "/") == 0:
			configs = appendNew(configs, p)
		case strings.HasSuffix(p, "/bin/systemd-boot"):
			builders = appendNew(builders, p)
		}
	}
	switch {
	case len(configs) > 0:
		s.Loader = LoaderGRUB
		for _, c := range configs {
			b, err := r.readFile("/", c, maxText)
			if err != nil {
				return fmt.Errorf("%s names %s, which cannot be read: %w", s.InstallBootloader, c, err)
			}
			g, err := ParseGRUBConfig(b)
			if err != nil {
				return fmt.Errorf("%s: %w", c, err)
			}
			g.Config = c
			s.GRUB = append(s.GRUB, *g)
		}
	case len(builders) > 0:
		s.Loader = LoaderSystemdBoot
		b, err := r.readFile("/", builders[0], maxText)
		if err != nil {
			return fmt.Errorf("%s names %s, which cannot be read: %w", s.InstallBootloader, builders[0], err)
		}
		s.SystemdBoot = parseSystemdBootBuilder(b)
		s.SystemdBoot.Builder = builders[0]
	case strings.HasSuffix(s.InstallBootloader, "-install-grub.sh"):
		s.Loader = LoaderGRUB
	case strings.HasSuffix(s.InstallBootloader, "-install-systemd-boot.sh"):
		s.Loader = LoaderSystemdBoot
	}
	return nil
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// wrapperGap is how far a store path may follow INSTALL_BOOTLOADER: a
// makeWrapper script has `export INSTALL_BOOTLOADER='<path>'`, a
// makeBinaryWrapper binary its strings, separated by NULs and the
// `", "` of the setenv call it keeps for its error message.
const wrapperGap = 64

// findInstaller finds the installer's store path in a switch-to-configuration
// (a makeWrapper shell script, a makeBinaryWrapper ELF, or a script with
// the path substituted in): the store path right after INSTALL_BOOTLOADER,
// else one named like a nixpkgs installer.
func findInstaller(b []byte, re *regexp.Regexp) string {
	name := []byte(installBootloaderName)
	for rest := b; ; {
		i := bytes.Index(rest, name)
		if i < 0 {
			break
		}
		rest = rest[i+len(name):]
		gap := 0
		for gap < len(rest) && gap < wrapperGap && bytes.IndexByte([]byte("='\",\\ \t\n\x00"), rest[gap]) >= 0 {
			gap++
		}
		if loc := re.FindIndex(rest[gap:min(len(rest), gap+4096)]); loc != nil && loc[0] == 0 {
			if p := string(rest[gap : gap+loc[1]]); cleanStorePath(p) {
				return p
			}
		}
	}
	for _, p := range re.FindAll(b, -1) {
		for _, n := range installerNames {
			if strings.HasSuffix(string(p), n) && cleanStorePath(string(p)) {
				return string(p)
			}
		}
	}
	return ""
}

// builderValueRe matches a value systemd-boot-builder.py has baked in:
// `NAME = "value"` or, since 25.05, `NAME = Path("value")`.
var builderValueRe = regexp.MustCompile(`(?m)^(EFI_SYS_MOUNT_POINT|BOOT_MOUNT_POINT|CAN_TOUCH_EFI_VARIABLES)[ \t]*=[ \t]*(?:Path\([ \t]*)?"([^"\n]*)"`)

// parseSystemdBootBuilder reads the values the builder has baked in; one
// still a placeholder (@name@) or missing stays "".
func parseSystemdBootBuilder(b []byte) *SystemdBoot {
	sb := &SystemdBoot{}
	for _, m := range builderValueRe.FindAllSubmatch(b, -1) {
		v := string(m[2])
		if strings.Contains(v, "@") {
			continue
		}
		switch string(m[1]) {
		case "EFI_SYS_MOUNT_POINT":
			sb.ESP = v
		case "BOOT_MOUNT_POINT":
			sb.Boot = v
		case "CAN_TOUCH_EFI_VARIABLES":
			sb.CanTouchEFIVariables = v == "1"
		}
	}
	return sb
}
