// Package ova writes an OVA: the single-file OVF package (DMTF DSP0243, OVF
// 1.x) that VMware (ovftool, vSphere, Workstation) and VirtualBox
// (`VBoxManage import`) import. It is a POSIX ustar archive holding, in this
// order, the OVF descriptor, one stream-optimized VMDK and a manifest with
// the SHA256 of both, in ovftool's "SHA256(name)= hex" lines. DSP0243 wants
// the descriptor first and allows the manifest after the disks; putting it
// last lets the disk be hashed as it is streamed, with no second read.
//
// The hardware described is what both importers take and a stock NixOS
// boots; see descriptor.go for each choice. Output depends only on the
// Machine, the disk's bytes, the capacity and mtime.
package ova

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Machine is the virtual machine the appliance describes.
type Machine struct {
	// Name is the VM's name and the stem of the member files:
	// <Name>.ovf, <Name>-disk1.vmdk, <Name>.mf.
	Name      string
	CPUs      int
	MemoryMiB int
	// Firmware is "bios" or "efi".
	Firmware string
}

// Limits of a Machine's fields.
const (
	MaxNameLen   = 64
	MinCPUs      = 1
	MaxCPUs      = 128
	MinMemoryMiB = 64
	MaxMemoryMiB = 4 << 20 // 4 TiB
)

// maxUSTARTime is one past the largest mtime ustar's 11 octal digits hold.
const maxUSTARTime = 1 << 33

// progressStep is how many disk bytes pass between progress reports (a
// variable so that tests can see many reports on a small disk).
var progressStep int64 = 64 << 20

// FieldError is a Machine field that is not allowed; Field is the Go field
// name, for callers to map to their own configuration keys.
type FieldError struct {
	Field   string // Name, CPUs, MemoryMiB or Firmware
	Value   string // the value refused, quoted or printed as a number
	Allowed string // what the field may be
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("ova: Machine.%s %s is not allowed: %s", e.Field, e.Value, e.Allowed)
}

// Validate checks every field and returns the first FieldError.
func (m Machine) Validate() error {
	if !safeName(m.Name) {
		return &FieldError{"Name", fmt.Sprintf("%q", m.Name),
			fmt.Sprintf("1 to %d characters of A-Z a-z 0-9 . _ -, not starting with '.'", MaxNameLen)}
	}
	if m.CPUs < MinCPUs || m.CPUs > MaxCPUs {
		return &FieldError{"CPUs", fmt.Sprint(m.CPUs), fmt.Sprintf("%d to %d", MinCPUs, MaxCPUs)}
	}
	if m.MemoryMiB < MinMemoryMiB || m.MemoryMiB > MaxMemoryMiB {
		return &FieldError{"MemoryMiB", fmt.Sprint(m.MemoryMiB), fmt.Sprintf("%d to %d", MinMemoryMiB, MaxMemoryMiB)}
	}
	if m.Firmware != "bios" && m.Firmware != "efi" {
		return &FieldError{"Firmware", fmt.Sprintf("%q", m.Firmware), `"bios" or "efi"`}
	}
	return nil
}

// safeName: a file stem no importer, shell or archive tool reads as a path,
// option or hidden file, and short enough for ustar's 100-byte names.
func safeName(s string) bool {
	if s == "" || len(s) > MaxNameLen || s[0] == '.' {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

// Member names inside the OVA.
func (m Machine) descriptorName() string { return m.Name + ".ovf" }
func (m Machine) diskName() string       { return m.Name + "-disk1.vmdk" }
func (m Machine) manifestName() string   { return m.Name + ".mf" }

// Write writes the OVA to dst: the descriptor, the disk, the manifest.
// disk is a stream-optimized VMDK (qemu-img convert -O vmdk -o
// subformat=streamOptimized, already normalised by the caller); it is read
// from offset 0 whatever the file's position, in bounded memory. capacity is
// its virtual size in bytes and must be the one its header records. Every
// member gets mtime (Unix seconds), owner 0:0 without names and mode 0644.
// progress, if not nil, gets the disk bytes copied so far every progressStep
// bytes and once at the end.
func Write(dst io.Writer, m Machine, disk *os.File, capacity int64, mtime int64, progress func(int64)) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if mtime < 0 || mtime >= maxUSTARTime {
		return fmt.Errorf("ova: mtime %d is outside what ustar holds (0 to %d)", mtime, int64(maxUSTARTime-1))
	}
	fi, err := disk.Stat()
	if err != nil {
		return fmt.Errorf("ova: disk: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("ova: disk %s is a %v, not a regular file", disk.Name(), fi.Mode().Type())
	}
	size := fi.Size()
	if err := checkVMDK(disk, size, capacity); err != nil {
		return fmt.Errorf("ova: disk %s: %w", disk.Name(), err)
	}
	desc, err := Descriptor(m, size, capacity)
	if err != nil {
		return err
	}

	tw := tar.NewWriter(dst)
	header := func(name string, size int64) *tar.Header {
		return &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     name,
			Size:     size,
			Mode:     0o644,
			ModTime:  time.Unix(mtime, 0),
			Format:   tar.FormatUSTAR,
		}
	}
	descSum := sha256.Sum256(desc)
	if err := writeMember(tw, header(m.descriptorName(), int64(len(desc))), desc); err != nil {
		return err
	}
	if err := tw.WriteHeader(header(m.diskName(), size)); err != nil {
		return fmt.Errorf("ova: %s: %w", m.diskName(), err)
	}
	diskSum, err := copyDisk(tw, disk, size, progress)
	if err != nil {
		return fmt.Errorf("ova: %s: %w", m.diskName(), err)
	}
	manifest := fmt.Appendf(nil, "SHA256(%s)= %x\nSHA256(%s)= %x\n",
		m.descriptorName(), descSum, m.diskName(), diskSum)
	if err := writeMember(tw, header(m.manifestName(), int64(len(manifest))), manifest); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("ova: closing the archive: %w", err)
	}
	return nil
}

func writeMember(tw *tar.Writer, h *tar.Header, data []byte) error {
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("ova: %s: %w", h.Name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("ova: %s: %w", h.Name, err)
	}
	return nil
}

// copyDisk streams size bytes of disk into w through a 1 MiB buffer and
// returns their SHA256.
func copyDisk(w io.Writer, disk *os.File, size int64, progress func(int64)) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var done, reported int64
	for done < size {
		n, err := disk.ReadAt(buf[:min(int64(len(buf)), size-done)], done)
		if n > 0 {
			h.Write(buf[:n])
			if _, werr := w.Write(buf[:n]); werr != nil {
				return sum, werr
			}
			done += int64(n)
			if progress != nil && done-reported >= progressStep {
				reported = done - done%progressStep
				progress(done)
			}
		}
		if err != nil && done < size {
			if errors.Is(err, io.EOF) {
				return sum, fmt.Errorf("the disk shrank to %d bytes while it was copied (it had %d)", done, size)
			}
			return sum, err
		}
	}
	if progress != nil && reported != done {
		progress(done)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
