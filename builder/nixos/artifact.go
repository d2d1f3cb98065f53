package nixos

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/diskartifact"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
)

// Artifact is the image file the builder wrote.
type Artifact struct {
	path      string
	efiVars   string // touch_efi_vars' variable store, or ""
	format    string // as the user named it (qcow2-compressed)
	diskType  string // qemu-img's name (qcow2)
	diskBytes int64
	paths     int
	generated map[string]interface{}
}

func newArtifact(state multistep.StateBag) *Artifact {
	c := state.Get("config").(*Config)
	p := state.Get("plan").(*plan)
	a := &Artifact{
		path:      state.Get("image_path").(string),
		format:    c.format.Name,
		diskType:  c.format.FileType(),
		diskBytes: p.layout.DiskSize,
		paths:     len(state.Get("closure").([]nixstore.PathInfo)),
	}
	if v, ok := state.GetOk("efi_vars"); ok {
		a.efiVars = v.(string)
	}
	a.generated = map[string]interface{}{
		"ImagePath":           a.path,
		"ImageFormat":         a.format,
		"DiskSize":            fmt.Sprint(a.diskBytes >> 20),
		"StorePathCount":      fmt.Sprint(a.paths),
		"PartitionTableType":  string(c.layout),
		stageops.GeneratedKey: stageops.Install,
	}
	if c.OnlyNixStore {
		a.generated[stageops.GeneratedKey] = stageops.StoreOnly
	}
	return a
}

func (a *Artifact) BuilderId() string { return BuilderID }
func (a *Artifact) Files() []string {
	if a.efiVars != "" {
		return []string{a.path, a.efiVars}
	}
	return []string{a.path}
}
func (a *Artifact) Id() string { return a.path }

func (a *Artifact) String() string {
	return fmt.Sprintf("NixOS image (%s, %d store paths): %s", a.format, a.paths, a.path)
}

// State answers the keys Packer's vagrant post-processor (libvirt provider)
// and packer-plugin-qemu users read, plus the generated data.
func (a *Artifact) State(name string) interface{} {
	switch name {
	case "diskName":
		return filepath.Base(a.path) // vagrant matches it against Files()' base names
	case "diskType":
		if a.diskType == "" {
			return nil // a cloud archive (gce, ova), no disk a reader opens
		}
		return a.diskType
	case "diskSize":
		return diskartifact.SizeString(a.diskBytes) // vagrant parses qemu size strings
	case "domainType":
		// What the box's users run it with: libvirt's default, KVM. The
		// image needs none (the build may have used TCG), but a box that
		// said "tcg" would make vagrant-libvirt emulate every instruction.
		return "kvm"
	case "efiVars":
		return a.efiVars
	case "generated_data":
		return a.generated
	}
	return nil
}

// Destroy removes the files we wrote, and nothing else the directory holds.
func (a *Artifact) Destroy() error {
	for _, f := range a.Files() {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
