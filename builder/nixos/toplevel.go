package nixos

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	nixtoplevel "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/toplevel"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

// toplevel is what install mode needs from a system.build.toplevel.
type toplevel struct {
	path          string
	kernel        string // bzImage
	modulesDir    string // <kernel-modules>/lib/modules/<version>, "" if the kernel has no modules
	kernelVersion string
	arch          qemu.Arch // the installer VM's, from the system's platform

	// What the system wants from its installer (internal/nix/toplevel);
	// nil in tests that make a toplevel by hand: nothing known.
	wants *nixtoplevel.System
	boot  nixtoplevel.BootMounts // where it mounts its ESP and XBOOTLDR
	// files is where the host reads the system's files; nil: hostFiles.
	files systemFiles
}

// systemFiles is where the host reads a system's files: the store paths
// themselves (hostFiles), or a storeview.View of their NARs when the
// system comes from binary caches. Resolve maps a path in the store to a
// readable one; ResolveTree also makes every file under it readable.
type systemFiles interface {
	Resolve(p string) (string, error)
	ResolveTree(p string) (string, error)
}

// hostFiles reads a system in the host's store: every path is itself.
type hostFiles struct{}

func (hostFiles) Resolve(p string) (string, error) {
	_, err := os.Stat(p)
	return p, err
}

func (hostFiles) ResolveTree(p string) (string, error) { return p, nil }

// inspectToplevel checks that path is a NixOS system: it has the switch
// script the installer runs and a kernel to boot the installer VM with.
// It reads what the system wants from its installer: where its boot
// partitions go, its boot loader's settings, its bootspec (store paths
// under storeDir, "" for /nix/store), through files.
func inspectToplevel(path, storeDir string, files systemFiles) (*toplevel, error) {
	t := &toplevel{path: path, files: files}
	for _, need := range []string{"bin/switch-to-configuration", "kernel", "activate"} {
		if !t.has(need) {
			return nil, fmt.Errorf("%s is not a NixOS system (config.system.build.toplevel): it has no %s", path, need)
		}
	}
	kernel, err := files.Resolve(filepath.Join(path, "kernel"))
	if err != nil {
		return nil, err
	}
	t.kernel = kernel
	t.kernelVersion = "with everything built in"
	if t.has("kernel-modules") {
		tree, err := files.ResolveTree(filepath.Join(path, "kernel-modules"))
		if err != nil {
			return nil, err
		}
		dir, err := ModulesDir(tree)
		if err != nil {
			return nil, err
		}
		t.modulesDir, t.kernelVersion = dir, filepath.Base(dir)
	}
	r := nixtoplevel.Reader{StoreDir: storeDir}
	if _, host := files.(hostFiles); !host {
		r.Resolve = files.Resolve
	}
	wants, err := r.Read(path)
	if err != nil {
		return nil, err
	}
	// Before any work: the installer VM runs the system's own kernel, so
	// its architecture is the system's, never the host's. A toplevel
	// without a `system` file is taken by its kernel's header.
	if t.arch, err = systemArch(path, wants.Platform, kernel); err != nil {
		return nil, err
	}
	if t.boot, err = wants.BootMounts(); err != nil {
		return nil, err
	}
	t.wants = wants
	return t, nil
}

// has says whether the system holds rel (a path inside it).
func (t *toplevel) has(rel string) bool {
	files := t.files
	if files == nil {
		files = hostFiles{}
	}
	_, err := files.Resolve(filepath.Join(t.path, rel))
	return err == nil
}

// bootMount is one of the layout's FAT partitions and the directory
// (relative to the root) the installer mounts it on.
type bootMount struct {
	role disk.Role
	dir  string
}

// bootMounts says where the installer mounts the layout's ESP and
// XBOOTLDR, parents first: where the system mounts them (its boot loader's
// settings, its fstab), or, when the system does not say, where
// make-disk-image does (the ESP on /boot; with efixbootldr the ESP on /efi
// and XBOOTLDR on /boot). A partition the system has no use for is not
// mounted.
func (t *toplevel) bootMounts(layout disk.Type) []bootMount {
	var out []bootMount
	switch {
	case t == nil || !t.boot.Known:
		switch {
		case layout == disk.EFIXBootLdr:
			out = []bootMount{{disk.RoleESP, "efi"}, {disk.RoleXBootLdr, "boot"}}
		case hasESP(layout):
			out = []bootMount{{disk.RoleESP, "boot"}}
		}
	default:
		if p := t.boot.ESP.Point; p != "" && hasESP(layout) {
			out = append(out, bootMount{disk.RoleESP, strings.TrimPrefix(p, "/")})
		}
		if p := t.boot.XBootLdr.Point; p != "" && layout == disk.EFIXBootLdr {
			out = append(out, bootMount{disk.RoleXBootLdr, strings.TrimPrefix(p, "/")})
		}
	}
	// A mount point inside another (/boot/efi in /boot) comes after it.
	slices.SortStableFunc(out, func(a, b bootMount) int {
		return strings.Count(a.dir, "/") - strings.Count(b.dir, "/")
	})
	return out
}

// espDir is where the installer mounts the ESP, "" when it does not.
func (t *toplevel) espDir(layout disk.Type) string {
	for _, m := range t.bootMounts(layout) {
		if m.role == disk.RoleESP {
			return m.dir
		}
	}
	return ""
}

func hasESP(l disk.Type) bool { return l == disk.EFI || l == disk.EFIXBootLdr || l == disk.Hybrid }

// grubBIOS says whether the system installs GRUB's BIOS core (onto which
// devices): it needs room after the MBR or a BIOS boot partition.
func (t *toplevel) grubBIOS() (devices []string, ok bool) {
	if t == nil || t.wants == nil {
		return nil, false
	}
	for _, g := range t.wants.GRUB {
		if g.BIOS() {
			ok = true
			for _, d := range g.BIOSDevices() {
				if !slices.Contains(devices, d) {
					devices = append(devices, d)
				}
			}
		}
	}
	return devices, ok
}

// deviceLinks are the devices the system's GRUB names that the installer
// links to the VM's disk, as make-disk-image does (`ln -s /dev/vda <dev>`):
// boot.loader.grub.devices is often /dev/sda or a /dev/disk/by-id path.
func (t *toplevel) deviceLinks() []string {
	devs, _ := t.grubBIOS()
	return slices.DeleteFunc(devs, func(d string) bool { return d == installerDisk })
}

// installerDisk is the installer VM's disk (virtio-blk).
const installerDisk = "/dev/vda"

// goodDevice is a device path the installer may create as a link: under
// /dev, clean, and not the disk itself or one of its partitions' names.
func goodDevice(d string) bool {
	return path.Clean(d) == d && strings.HasPrefix(d, "/dev/") && !strings.HasPrefix(d, installerDisk)
}
