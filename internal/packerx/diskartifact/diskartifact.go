// Package diskartifact finds the disk image in any builder's artifact and is
// the artifact the nixos-convert and nixos-reproducible post-processors hand
// on: one disk image with the state keys Packer's vagrant (libvirt),
// checksum, compress and manifest post-processors read.
package diskartifact

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/container"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// Disk is the disk image of an input artifact.
type Disk struct {
	Path   string
	Format qemuimg.Format // qemu-img's format of the file
	State  State          // what the input said, carried forward
}

// State is the artifact state carried from one post-processor to the next.
type State struct {
	DiskSize   string // qemu size string, e.g. "327M"
	DomainType string
	Generated  map[string]interface{}
}

// Find picks the disk image among a's files: the file the state key
// diskName (or the first of diskPaths) names, else the first file whose
// extension is a disk image's. It must be a regular file. Its format comes from diskType when given,
// else from the file's own header (never from the extension alone).
func Find(a packersdk.Artifact) (Disk, error) {
	files := a.Files()
	var path string
	if name, ok := a.State("diskName").(string); ok && name != "" {
		for _, f := range files {
			if filepath.Base(f) == filepath.Base(name) {
				path = f
				break
			}
		}
	}
	if path == "" {
		if paths := stringList(a.State("diskPaths")); len(paths) > 0 {
			// Only one of the artifact's own files: the post-processors
			// rewrite or replace what Find returns.
			for _, f := range files {
				if filepath.Clean(f) == filepath.Clean(paths[0]) {
					path = f
					break
				}
			}
			if path == "" {
				return Disk{}, fmt.Errorf("the input artifact (BuilderId %q) names its disk %q in diskPaths, which is not among its files %q", a.BuilderId(), paths[0], files)
			}
		}
	}
	if path == "" {
		for _, f := range files {
			if _, ok := qemuimg.FormatByExt(filepath.Ext(f)); ok {
				path = f
				break
			}
		}
	}
	if path == "" {
		for _, f := range files {
			if strings.HasSuffix(f, ".ova") || strings.HasSuffix(f, ".tar.gz") {
				return Disk{}, fmt.Errorf("the input artifact's %s is a cloud archive (format gce or ova), not a disk image: convert the builder's raw or qcow2 image instead", f)
			}
		}
		return Disk{}, fmt.Errorf("the input artifact (BuilderId %q) has no disk image among its files %q: want a diskName or diskPaths state key, or a file ending in .img, .raw, .qcow2, .vdi, .vhd, .vhdx or .vmdk", a.BuilderId(), files)
	}
	// A directory, device or FIFO is no disk image (and opening a FIFO
	// would wait for a writer forever).
	if fi, err := os.Stat(path); err != nil {
		return Disk{}, fmt.Errorf("the input artifact's disk image: %w", err)
	} else if !fi.Mode().IsRegular() {
		return Disk{}, fmt.Errorf("the input artifact's disk image %s is not a regular file (%v)", path, fi.Mode().Type())
	}
	d := Disk{Path: path}
	if t, ok := a.State("diskType").(string); ok && t != "" {
		f, ok := qemuimg.FormatByQemuName(t)
		if !ok {
			return Disk{}, fmt.Errorf("the input artifact (BuilderId %q) says its disk %s is of type %q, which is not one of raw, qcow2, vdi, vpc, vhdx, vmdk", a.BuilderId(), path, t)
		}
		d.Format = f
	} else {
		fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a FIFO swapped in since the Stat
		if err != nil {
			return Disk{}, fmt.Errorf("the input artifact's disk image: %w", err)
		}
		defer fh.Close()
		fi, err := fh.Stat()
		if err != nil {
			return Disk{}, err
		}
		if !fi.Mode().IsRegular() {
			return Disk{}, fmt.Errorf("the input artifact's disk image %s is not a regular file", path)
		}
		got, err := container.Detect(fh, fi.Size())
		if err != nil {
			return Disk{}, fmt.Errorf("%s: %w", path, err)
		}
		f, ok := qemuimg.FormatByQemuName(string(got))
		if !ok {
			return Disk{}, fmt.Errorf("%s: a %s image, which nixos post-processors do not read", path, got)
		}
		d.Format = f
	}
	d.State.DiskSize, _ = a.State("diskSize").(string)
	d.State.DomainType, _ = a.State("domainType").(string)
	if d.State.DomainType == "" {
		// vagrant's libvirt provider requires one: libvirt's default, kvm,
		// is what a box's users run (tcg would emulate every instruction).
		d.State.DomainType = "kvm"
	}
	if g, ok := a.State("generated_data").(map[string]interface{}); ok {
		d.State.Generated = g
	}
	return d, nil
}

func stringList(v interface{}) []string {
	switch l := v.(type) {
	case []string:
		return l
	case []interface{}:
		var out []string
		for _, x := range l {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// Artifact is one disk image a post-processor made or rewrote.
type Artifact struct {
	ID     string // the post-processor's BuilderId
	Path   string
	Format qemuimg.Format
	Carry  State
	// Owned: Destroy removes Path. False when the file is the input's own
	// (nixos-reproducible rewrites it in place), so that Packer's cleanup
	// of an intermediate artifact never deletes what it was not given.
	Owned bool
}

var _ packersdk.Artifact = (*Artifact)(nil)

func (a *Artifact) BuilderId() string { return a.ID }
func (a *Artifact) Files() []string   { return []string{a.Path} }
func (a *Artifact) Id() string        { return filepath.Base(a.Path) }
func (a *Artifact) String() string {
	return fmt.Sprintf("NixOS disk image (%s): %s", a.Format.Name, a.Path)
}

func (a *Artifact) State(name string) interface{} {
	switch name {
	case "diskName":
		return filepath.Base(a.Path)
	case "diskType":
		if a.Format.FileType() == "" {
			return nil // a cloud archive (gce, ova): no disk a reader opens
		}
		return a.Format.FileType()
	case "diskPaths":
		return []string{a.Path}
	case "diskSize":
		if a.Carry.DiskSize == "" {
			return nil
		}
		return a.Carry.DiskSize
	case "domainType":
		if a.Carry.DomainType == "" {
			return nil
		}
		return a.Carry.DomainType
	case "generated_data":
		return a.Carry.Generated
	}
	return nil
}

func (a *Artifact) Destroy() error {
	if !a.Owned {
		return nil
	}
	if err := os.Remove(a.Path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// SizeString is a byte count as the qemu size string vagrant parses.
func SizeString(n int64) string { return fmt.Sprintf("%dM", (n+1<<20-1)>>20) }

// Stem is a file name without its extension.
func Stem(p string) string { return strings.TrimSuffix(filepath.Base(p), filepath.Ext(p)) }
