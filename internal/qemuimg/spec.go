package qemuimg

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Format is an output format as users name it.
type Format struct {
	Name   string // raw, qcow2, …, or a cloud's name (azure, gce, ova)
	Qemu   string // qemu-img's -O (for a cloud format, the disk inside)
	Ext    string // file extension
	Packed bool   // qcow2-compressed: every cluster compressed
	// IDs: the container header carries UUIDs and time stamps that
	// qemu-img invents (vdi, vpc, vhdx, vmdk); raw and qcow2 have none.
	IDs bool
	// Sub: qemu-img's subformat option, "" for its default.
	Sub string
	// Cloud: what is made of qemu-img's output for a cloud's import
	// (internal/diskout): "" for nothing, else azure, gce or ova.
	Cloud string
}

var formats = map[string]Format{
	"raw":              {Name: "raw", Qemu: "raw", Ext: "img"},
	"qcow2":            {Name: "qcow2", Qemu: "qcow2", Ext: "qcow2"},
	"qcow2-compressed": {Name: "qcow2-compressed", Qemu: "qcow2", Ext: "qcow2", Packed: true},
	"vdi":              {Name: "vdi", Qemu: "vdi", Ext: "vdi", IDs: true},
	"vpc":              {Name: "vpc", Qemu: "vpc", Ext: "vhd", IDs: true},
	"vhdx":             {Name: "vhdx", Qemu: "vhdx", Ext: "vhdx", IDs: true},
	"vmdk":             {Name: "vmdk", Qemu: "vmdk", Ext: "vmdk", IDs: true},
	// AWS import-snapshot, VMware: grains compressed, written in order.
	"vmdk-stream": {Name: "vmdk-stream", Qemu: "vmdk", Ext: "vmdk", IDs: true, Sub: "streamOptimized"},
	// Azure: a fixed VHD of whole MiB (the raw image plus a footer).
	"azure": {Name: "azure", Qemu: "raw", Ext: "vhd", IDs: true, Cloud: "azure"},
	// Google Compute Engine: disk.raw, sparse, in an oldgnu tar.gz.
	"gce": {Name: "gce", Qemu: "raw", Ext: "tar.gz", Cloud: "gce"},
	// VMware and VirtualBox appliances: OVF, stream-optimised VMDK, manifest.
	"ova": {Name: "ova", Qemu: "vmdk", Ext: "ova", IDs: true, Sub: "streamOptimized", Cloud: "ova"},
}

// Compressions are qcow2's compression types.
var Compressions = []string{"zlib", "zstd"}

// Names lists the formats, for error messages.
func Names() string {
	var n []string
	for k := range formats {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

// Spec is a checked conversion target.
type Spec struct {
	Format
	Compression string // "" or one of Compressions (qcow2 only)
}

// Parse checks a format and compression as a user gave them. A compression
// with plain qcow2 means qcow2-compressed with that algorithm. Each problem
// is its own error (errors.Join), so callers can list them all.
func Parse(format, compression string) (Spec, error) {
	var errs []error
	f, ok := formats[format]
	if !ok {
		errs = append(errs, fmt.Errorf("format: %q is not a known format; allowed: %s", format, Names()))
	}
	switch {
	case compression == "":
	case compression != "zlib" && compression != "zstd":
		errs = append(errs, fmt.Errorf("compression: %q is not allowed; allowed: %s", compression, strings.Join(Compressions, ", ")))
	case ok && f.Qemu != "qcow2":
		errs = append(errs, fmt.Errorf("compression: only qcow2 images are compressed; format is %q (use format = \"qcow2-compressed\")", format))
	case ok:
		f = formats["qcow2-compressed"]
	}
	if len(errs) > 0 {
		return Spec{}, errors.Join(errs...)
	}
	return Spec{Format: f, Compression: compression}, nil
}

// Errors splits what Parse returned into its problems.
func Errors(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// FormatByQemuName maps qemu-img's format names (as `qemu-img info` and
// artifacts' diskType give them) to ours; qcow2 stays qcow2.
func FormatByQemuName(q string) (Format, bool) {
	if q == "vhd" {
		q = "vpc"
	}
	f, ok := formats[q]
	return f, ok && f.Name == q
}

// FormatByExt guesses a disk image's format from its file name extension.
func FormatByExt(ext string) (Format, bool) {
	switch strings.TrimPrefix(strings.ToLower(ext), ".") {
	case "img", "raw":
		return formats["raw"], true
	case "qcow2", "qcow":
		return formats["qcow2"], true
	case "vdi":
		return formats["vdi"], true
	case "vhd", "vpc":
		return formats["vpc"], true
	case "vhdx":
		return formats["vhdx"], true
	case "vmdk":
		return formats["vmdk"], true
	}
	return Format{}, false
}

// Args is the qemu-img command line that converts src (in srcFormat, a
// qemu-img format name) to dst.
//
// -f is always given, so qemu-img never guesses a format from the guest's
// bytes; -S 4k keeps zero runs sparse; -p prints progress. Never -W: out of
// order writes place clusters by timing, and no header rewrite undoes that
// (in-order writes are byte-identical across runs, compressed or not).
//
// vmdk names its data file in the descriptor, so dst must already carry the
// final base name (internal/diskout's staging directory does).
func (s Spec) Args(src, srcFormat, dst string) []string {
	args := []string{"convert", "-p", "-f", srcFormat, "-O", s.Qemu, "-S", "4k"}
	if s.Sub != "" {
		args = append(args, "-o", "subformat="+s.Sub)
	}
	if s.Packed {
		args = append(args, "-c")
		if s.Compression != "" {
			args = append(args, "-o", "compression_type="+s.Compression)
		}
	}
	return append(args, src, dst)
}

// FileType is qemu-img's format of the file a format makes, "" when it is
// an archive no disk reader opens (gce, ova): a fixed VHD is raw data with
// a footer, which qemu-img reads as vpc only when told.
func (f Format) FileType() string {
	switch f.Cloud {
	case "":
		return f.Qemu
	case "azure":
		return "vpc"
	}
	return ""
}
