package diskout

import (
	"errors"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/ova"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// OVA defaults: what a small NixOS server wants; the keys change them.
const (
	DefaultOVACPUs   = 2
	DefaultOVAMemory = 2048 // MiB
)

// CheckOVA checks the ova_* keys of a builder or post-processor whose
// format is f, filling the defaults for an ova, and returns each problem
// naming its key. name is the appliance's name (the image's file stem),
// which the key nameKey sets.
func CheckOVA(f qemuimg.Format, nameKey, name string, cpus, memory *int, firmware string) []error {
	if f.Cloud != "ova" {
		var errs []error
		for _, k := range []struct {
			key string
			set bool
		}{{"ova_cpus", *cpus != 0}, {"ova_memory", *memory != 0}, {"ova_firmware", firmware != ""}} {
			if k.set {
				errs = append(errs, fmt.Errorf("%s: only for format = \"ova\" (format is %q)", k.key, f.Name))
			}
		}
		return errs
	}
	if *cpus == 0 {
		*cpus = DefaultOVACPUs
	}
	if *memory == 0 {
		*memory = DefaultOVAMemory
	}
	var errs []error
	if *cpus < ova.MinCPUs || *cpus > ova.MaxCPUs {
		errs = append(errs, fmt.Errorf("ova_cpus: %d is not allowed; allowed: %d to %d", *cpus, ova.MinCPUs, ova.MaxCPUs))
	}
	if *memory < ova.MinMemoryMiB || *memory > ova.MaxMemoryMiB {
		errs = append(errs, fmt.Errorf("ova_memory: %d MiB is not allowed; allowed: %d to %d", *memory, ova.MinMemoryMiB, ova.MaxMemoryMiB))
	}
	// "" is filled later, from the layout the image has.
	if firmware != "" && firmware != "bios" && firmware != "efi" {
		errs = append(errs, fmt.Errorf("ova_firmware: %q is not allowed; allowed: bios, efi", firmware))
	}
	if len(errs) == 0 {
		fw := firmware
		if fw == "" {
			fw = "bios"
		}
		var fe *ova.FieldError
		if err := (ova.Machine{Name: name, CPUs: *cpus, MemoryMiB: *memory, Firmware: fw}).Validate(); errors.As(err, &fe) {
			errs = append(errs, fmt.Errorf("%s: %q cannot name an OVA appliance (its files are named after it); allowed: %s", nameKey, name, fe.Allowed))
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// FirmwareFor is the firmware an image of a partition_table_type boots
// with: UEFI for the layouts without BIOS boot code.
func FirmwareFor(layout string) string {
	if layout == "efi" || layout == "efixbootldr" {
		return "efi"
	}
	return "bios"
}
