package qemu

import (
	"fmt"
	"runtime"
)

// Arch is what differs between the guest architectures the installer VM
// runs: the emulator, the machine, the CPU model under TCG, the serial
// console's name in the guest and the EFI firmware.
type Arch struct {
	Name   string // "x86_64", "aarch64"
	GOARCH string // the guest agent's build
	Binary string // the default emulator

	// Package names the Debian package that holds Binary, for messages.
	Package string
	// Console is the kernel's name for the first serial port QEMU's
	// -serial attaches (console=...).
	Console string
	// BIOS says the machine boots a legacy BIOS disk (no UEFI needed).
	BIOS bool
	// TCGCPU is the CPU model under TCG; KVM always uses the host's.
	TCGCPU string
	// Firmware finds the EFI code and vars template the distribution
	// installs for this architecture.
	Firmware func() (code, vars string, err error)
	// FirmwarePackage names the Debian package of Firmware, for messages.
	FirmwarePackage string
	// KernelArgs are command line parameters only this architecture's
	// kernel knows (others would reach the agent as arguments).
	KernelArgs string
}

// X86_64 is the PC: pc (BIOS) or q35 (OVMF), the 8250 serial port.
var X86_64 = Arch{
	Name: "x86_64", GOARCH: "amd64", Binary: "qemu-system-x86_64", Package: "qemu-system-x86",
	Console: "ttyS0", BIOS: true, TCGCPU: "max",
	Firmware: FindOVMF, FirmwarePackage: "ovmf",
	// acpi=noirq: PCI interrupts from the firmware's tables, not by
	// running the ACPI links' AML (0.15 s per virtio device under TCG).
	// noreplace-smp: on one vCPU the kernel would rewrite every LOCK prefix
	// in its text, each write throwing away translated code (0.2 s).
	KernelArgs: "acpi=noirq noreplace-smp",
}

// AArch64 is QEMU's virt board: PL011 serial, PCIe for virtio, no BIOS,
// AAVMF (edk2 for ARM) as its UEFI. pauth-impdef: TCG computes pointer
// authentication codes with a cheap implementation-defined algorithm
// instead of QARMA, which boots about 40 % faster here.
var AArch64 = Arch{
	Name: "aarch64", GOARCH: "arm64", Binary: "qemu-system-aarch64", Package: "qemu-system-arm",
	Console: "ttyAMA0", TCGCPU: "max,pauth-impdef=on",
	Firmware: FindAAVMF, FirmwarePackage: "qemu-efi-aarch64",
}

// ArchByGOARCH returns the Arch whose guest is goarch.
func ArchByGOARCH(goarch string) (Arch, error) {
	for _, a := range []Arch{X86_64, AArch64} {
		if a.GOARCH == goarch {
			return a, nil
		}
	}
	return Arch{}, fmt.Errorf("qemu: no installer VM for %s guests (have amd64, arm64)", goarch)
}

// Native says whether the host runs this architecture's code itself, the
// condition for KVM.
func (a Arch) Native() bool { return a.GOARCH == runtime.GOARCH }

// machine is the -machine value.
func (a Arch) machine(efi bool) string {
	if a.Name == "aarch64" {
		return "virt"
	}
	if efi {
		return "q35"
	}
	return "pc"
}

// OrDefault is a, or X86_64 for the zero Arch (VMConfig's default).
func (a Arch) OrDefault() Arch {
	if a.Name == "" {
		return X86_64
	}
	return a
}
