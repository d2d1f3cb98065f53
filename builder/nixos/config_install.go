package nixos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// prepareInstall validates and defaults the install-mode keys.
func (c *Config) prepareInstall(bad func(string, ...interface{})) {
	n := 0
	for _, set := range []bool{c.System != "", c.Flake != "", c.NixFile != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		bad("system: install mode needs exactly one of system (a toplevel store path), flake (\"path#name\") or nix_file; %d given", n)
	}
	if len(c.StorePaths) > 0 {
		bad("store_paths: only for only_nix_store = true; in install mode name the system with system, flake or nix_file, and extra paths with additional_paths")
	}
	if c.Flake != "" {
		if ref, name, ok := strings.Cut(c.Flake, "#"); !ok || ref == "" || name == "" || strings.ContainsAny(name, "#\"") {
			bad("flake: %q is not \"<flake reference>#<configuration name>\", such as \".#myhost\"", c.Flake)
		}
	}
	if c.Attribute != "" && c.NixFile == "" {
		bad("attribute: only with nix_file")
	}
	if c.NixFile != "" && c.Attribute == "" {
		c.Attribute = "config.system.build.toplevel"
	}
	if c.InstallBootloader == nil {
		t := true
		c.InstallBootloader = &t
	}
	if c.CopyChannel == nil {
		v := c.Channel != ""
		c.CopyChannel = &v
	}
	if *c.CopyChannel && c.Channel == "" {
		bad("copy_channel: needs channel, a nixpkgs source directory; the plugin has no nixpkgs of its own to copy")
	}
	if c.Channel != "" {
		if fi, err := os.Stat(c.Channel); err != nil || !fi.IsDir() {
			bad("channel: %s is not a directory holding a nixpkgs source (%v)", c.Channel, err)
		}
	}
	if c.MemSize == 0 {
		c.MemSize = 256
	}
	if c.MemSize < 128 || c.MemSize > 1<<20 {
		bad("mem_size: %d MiB is outside 128..1048576", c.MemSize)
	}
	switch c.Accelerator {
	case "":
		c.Accelerator = "auto"
	case "auto", "kvm", "tcg":
	default:
		bad("accelerator: %q is not allowed; allowed: auto, kvm, tcg", c.Accelerator)
	}
	if c.KVMProbeTimeout == 0 {
		c.KVMProbeTimeout = 20 * time.Second
	}
	if c.KVMProbeTimeout < 0 {
		bad("kvm_probe_timeout: %s is negative", c.KVMProbeTimeout)
	}
	if c.InstallTimeout == 0 {
		c.InstallTimeout = 10 * time.Minute
	}
	if c.InstallTimeout < 0 {
		bad("install_timeout: %s is negative", c.InstallTimeout)
	}
	// Unset, the emulator is the system's architecture's, known once the
	// system is (toplevel.checkArch).
	if c.QemuBinary != "" {
		if _, err := exec.LookPath(c.QemuBinary); err != nil {
			bad("qemu_binary: %s not found: install mode runs a small QEMU VM; install Debian's qemu-system-x86 (or qemu-system-arm for aarch64 systems) or set qemu_binary", c.QemuBinary)
		}
	}
	c.prepareEFI(bad)
	if c.InstallerKernel != "" {
		if fi, err := os.Stat(c.InstallerKernel); err != nil || !fi.Mode().IsRegular() {
			bad("installer_kernel: %s is not a kernel image file (%v)", c.InstallerKernel, err)
		}
	}
	if c.InstallerModules != "" {
		if c.InstallerKernel == "" {
			bad("installer_modules: only with installer_kernel (the system's kernel comes with its own modules)")
		}
		if _, err := ModulesDir(c.InstallerModules); err != nil {
			bad("installer_modules: %v", err)
		}
	}
	if !installModeReady {
		bad("only_nix_store: install mode (false) is not available in this version yet; set only_nix_store = true for a store-only image")
	}
}

// installModeReady turns install mode on once its steps are all in place;
// until then its keys are validated but the build is refused up front.
const installModeReady = true

// prepareEFI checks touch_efi_vars and finds the firmware before any work.
func (c *Config) prepareEFI(bad func(string, ...interface{})) {
	if !c.TouchEFIVars {
		if c.EFIFirmwareCode != "" || c.EFIFirmwareVars != "" {
			bad("efi_firmware_code: only used with touch_efi_vars = true")
		}
		return
	}
	if c.layout != "" && !c.layout.IsGPT() {
		bad("touch_efi_vars: only with a GPT layout (legacy+gpt, efi, efixbootldr, hybrid), not %q", c.PartitionTableType)
	}
	if c.EFIFirmwareCode == "" && c.EFIFirmwareVars == "" {
		// The firmware is the system's architecture's (toplevel.checkArch).
		c.efiDefaulted = true
		return
	}
	for key, path := range map[string]string{"efi_firmware_code": c.EFIFirmwareCode, "efi_firmware_vars": c.EFIFirmwareVars} {
		if path == "" {
			bad("%s: must be set when the other OVMF file is", key)
		} else if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			bad("%s: %s is not a readable firmware file (%v)", key, path, err)
		}
	}
}

// ModulesDir finds the lib/modules/<version> directory (the one holding
// modules.dep) at dir: dir itself, dir/<version>, or dir/lib/modules/<version>.
func ModulesDir(dir string) (string, error) {
	for _, pat := range []string{"", "*", "lib/modules/*"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat, "modules.dep"))
		switch len(m) {
		case 0:
			continue
		case 1:
			return filepath.Dir(m[0]), nil
		default:
			return "", fmt.Errorf("%s holds modules for %d kernels; name one lib/modules/<version> directory", dir, len(m))
		}
	}
	return "", fmt.Errorf("%s holds no kernel modules (no modules.dep in it, in */ or in lib/modules/*/)", dir)
}
