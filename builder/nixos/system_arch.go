package nixos

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

// installPlatforms are the Nix platforms install mode boots, each in its
// own QEMU: the installer VM runs the system's own kernel.
var installPlatforms = map[string]qemu.Arch{
	"x86_64-linux":  qemu.X86_64,
	"aarch64-linux": qemu.AArch64,
}

// systemArch is the installer VM's architecture for a system whose
// `system` file says platform ("" when it has none), checked against its
// kernel's header: a toplevel that names one platform and ships another's
// kernel would only fail at install_timeout.
func systemArch(path, platform, kernel string) (qemu.Arch, error) {
	fromKernel, kerr := kernelArch(kernel)
	if platform == "" {
		if kerr != nil {
			return qemu.X86_64, nil // taken as it is, as before `system` was read
		}
		return fromKernel, nil
	}
	arch, ok := installPlatforms[platform]
	if !ok {
		return qemu.Arch{}, fmt.Errorf("%s is a NixOS system for %q: install mode boots the system's own kernel in QEMU, for x86_64-linux and aarch64-linux systems only; build a store-only image of it (only_nix_store = true) instead", path, platform)
	}
	if kerr == nil && fromKernel.Name != arch.Name {
		return qemu.Arch{}, fmt.Errorf("%s says it is for %q, but its kernel %s is an %s kernel", path, platform, kernel, fromKernel.Name)
	}
	return arch, nil
}

// kernelArch reads which architecture a kernel image is for: an x86 bzImage
// ("HdrS" at 0x202, the boot protocol's header), an arm64 Image ("ARM\x64"
// at 0x38, its header's magic) or an ELF vmlinux.
func kernelArch(kernel string) (qemu.Arch, error) {
	f, err := os.Open(kernel)
	if err != nil {
		return qemu.Arch{}, err
	}
	defer f.Close()
	var head [0x210]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && err != io.ErrUnexpectedEOF {
		return qemu.Arch{}, err
	}
	h := head[:n]
	switch {
	case len(h) >= 0x206 && bytes.Equal(h[0x202:0x206], []byte("HdrS")):
		return qemu.X86_64, nil
	case len(h) >= 0x3c && bytes.Equal(h[0x38:0x3c], []byte("ARM\x64")):
		return qemu.AArch64, nil
	case bytes.HasPrefix(h, []byte(elf.ELFMAG)):
		ef, err := elf.NewFile(f)
		if err != nil {
			return qemu.Arch{}, err
		}
		switch ef.Machine {
		case elf.EM_X86_64:
			return qemu.X86_64, nil
		case elf.EM_AARCH64:
			return qemu.AArch64, nil
		}
		return qemu.Arch{}, fmt.Errorf("an ELF kernel for %v, which install mode does not boot", ef.Machine)
	}
	return qemu.Arch{}, fmt.Errorf("not a kernel image install mode knows (an x86 bzImage, an arm64 Image or an ELF vmlinux)")
}

// checkArch settles, for the system's architecture, what Prepare left to
// it: the emulator (qemu_binary's default), the EFI firmware's defaults,
// and whether the accelerator and the layout can serve it. Nothing is
// written or booted yet.
func (t *toplevel) checkArch(c *Config) error {
	a := t.arch
	if c.QemuBinary == "" {
		if _, err := exec.LookPath(a.Binary); err != nil {
			return fmt.Errorf("qemu_binary: %s not found: the installer VM of an %s system runs in it; install Debian's %s or set qemu_binary", a.Binary, a.Name, a.Package)
		}
		c.QemuBinary = a.Binary
	}
	if c.Accelerator == "kvm" && !a.Native() {
		return fmt.Errorf("accelerator: kvm runs only guests of the host's architecture (%s), and this is an %s system; use auto or tcg", runtime.GOARCH, a.Name)
	}
	if !a.BIOS && c.layout != "" && c.layout.BIOS() {
		return fmt.Errorf("partition_table_type: %q boots through a PC BIOS, which an %s system does not have; use efi, efixbootldr or none", c.PartitionTableType, a.Name)
	}
	if c.TouchEFIVars && c.efiDefaulted {
		code, vars, err := a.Firmware()
		if err != nil {
			return fmt.Errorf("efi_firmware_code: %w", err)
		}
		c.EFIFirmwareCode, c.EFIFirmwareVars = code, vars
	}
	return nil
}
