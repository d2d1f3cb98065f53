// Package initrd assembles the installer VM's initrd: the plugin binary as
// /init and the kernel modules the agent needs, resolved like modprobe and
// decompressed as kmod would (the agent loads plain .ko files only).
package initrd

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/cpio"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
)

// DefaultModules is what the installer needs from a modular amd64 kernel:
// the virtio disk and serial port, ext4 with the crc32c its metadata
// checksums take, FAT (Debian's vfat mounts need nls_ascii for its default
// iocharset besides the codepage), efivarfs, and for system.etc.overlay
// the loop device, erofs and overlayfs its activation mounts /etc with
// (the installer has no modprobe for the kernel to load them on demand).
// Those this kernel neither ships nor builds in are skipped.
var DefaultModules = Needs{FAT: true, EFIVars: true, EtcOverlay: true}.Modules()

// Needs says which optional parts of DefaultModules an install uses, and
// for which architecture. Each module costs the installer VM tens of
// milliseconds to load under TCG, so a build loads only these.
type Needs struct {
	// GOARCH is the kernel's architecture as Go names it; "" is amd64.
	GOARCH     string
	FAT        bool // an ESP or XBOOTLDR is mounted
	EFIVars    bool // efivarfs (touch_efi_vars)
	EtcOverlay bool // system.etc.overlay
}

// Modules is the part of DefaultModules n asks for, in the order they are
// named (Build puts each one's dependencies before it).
func (n Needs) Modules() []string {
	var m []string
	if n.GOARCH == "arm64" {
		// QEMU's arm64 virt machine puts virtio devices on virtio-mmio
		// or, as -device virtio-*-pci, behind its generic PCIe host
		// bridge; a PC's are on PCI alone.
		m = append(m, "pci_host_generic", "virtio_mmio")
	}
	// crc32c_generic is named because ext4 and jbd2 find crc32c by name
	// when the filesystem mounts, and only a kernel whose index has the
	// softdeps (modules.softdep) would bring it otherwise.
	m = append(m, "virtio_pci", "virtio_blk", "virtio_console", "crc32c_generic", "ext4")
	if n.FAT {
		m = append(m, "vfat", "nls_cp437", "nls_iso8859-1", "nls_ascii")
	}
	if n.EFIVars {
		m = append(m, "efivarfs")
	}
	if n.EtcOverlay {
		m = append(m, EtcOverlayModules...)
	}
	return m
}

// EtcOverlayModules are the modules system.etc.overlay's activation needs:
// it mounts an erofs image through a loop device and overlayfs on /etc.
var EtcOverlayModules = []string{"loop", "erofs", "overlay"}

// Options says what goes into the installer initrd.
type Options struct {
	// AgentData, when set, is the static binary to install as /init
	// (agentbin's); otherwise Agent names it (the plugin itself, from
	// os.Executable()).
	Agent     string
	AgentData []byte
	// ModulesDir is <kernel-modules>/lib/modules/<version> of the kernel
	// that will boot the initrd; empty for a kernel with everything built in.
	ModulesDir string
	// Modules to load, with their dependencies; nil means Needs' modules
	// or, without Needs, DefaultModules. An explicitly named module the
	// kernel does not know is an error.
	Modules []string
	// Needs, when set, narrows the default modules to what it asks for.
	Needs *Needs
	// Gzip compresses the archive. OVMF's direct kernel boot loads the
	// initrd into the guest's memory itself and fails (it drops to its
	// shell) on the 49 MiB archive uncompressed in a 256 MiB VM.
	Gzip bool
}

// Build writes a cpio archive holding the agent as /init and the modules
// it loads at boot (lib/modules/load-order). The output depends only on
// the inputs' contents. Uncompressed unless o.Gzip: under TCG the
// kernel's gunzip of the agent took a second and the host's gzip more,
// and the archive goes to the guest's memory, not over a network.
func Build(w io.Writer, o Options) error {
	var agent io.Reader
	var agentSize int64
	if o.AgentData != nil {
		agent, agentSize = bytes.NewReader(o.AgentData), int64(len(o.AgentData))
	} else {
		f, err := os.Open(o.Agent)
		if err != nil {
			return fmt.Errorf("guest initrd: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("guest initrd: agent %s is not a regular file (%v)", o.Agent, err)
		}
		agent, agentSize = f, st.Size()
	}

	var db *kmod.DB
	var mods []string
	var err error
	if o.ModulesDir != "" {
		if db, err = kmod.Load(o.ModulesDir); err != nil {
			return fmt.Errorf("guest initrd: %w", err)
		}
		roots := o.Modules
		if roots == nil {
			defaults := DefaultModules
			if o.Needs != nil {
				defaults = o.Needs.Modules()
			}
			for _, m := range defaults {
				if db.Known(m) {
					roots = append(roots, m)
				}
			}
		}
		if mods, err = db.Order(roots); err != nil {
			return fmt.Errorf("guest initrd: %w", err)
		}
	}

	out := w
	var zw *gzip.Writer
	if o.Gzip {
		// Level 6 (the default) is within a few percent of best on a Go
		// binary at a third of the time.
		zw, _ = gzip.NewWriterLevel(w, gzip.DefaultCompression)
		out = zw
	}
	cw := cpio.NewWriter(out)
	dir := func(name string) error {
		return cw.WriteHeader(&cpio.Header{Name: name, Mode: fs.ModeDir | 0o755})
	}
	file := func(name string, mode fs.FileMode, size int64, r io.Reader) error {
		if err := cw.WriteHeader(&cpio.Header{Name: name, Mode: mode, Size: size}); err != nil {
			return err
		}
		_, err := io.Copy(cw, r)
		return err
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "mnt", "lib", "lib/modules"} {
		if err := dir(d); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init's stdio before init can
	// mount devtmpfs; without the node early output would be lost.
	if err := cw.WriteHeader(&cpio.Header{Name: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Devmajor: 5, Devminor: 1}); err != nil {
		return err
	}
	if err := file("init", 0o755, agentSize, agent); err != nil {
		return fmt.Errorf("guest initrd: %s: %w", o.Agent, err)
	}
	var order strings.Builder
	for _, m := range mods {
		name, err := writeModule(cw, db, m)
		if err != nil {
			return fmt.Errorf("guest initrd: %w", err)
		}
		order.WriteString(name + "\n")
	}
	if err := file("lib/modules/load-order", 0o644, int64(order.Len()), strings.NewReader(order.String())); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	if zw != nil {
		return zw.Close()
	}
	return nil
}

// writeModule ships module m as lib/modules/<m>.ko, decompressed: NixOS
// compresses its modules (xz) but builds its kernels without
// CONFIG_MODULE_DECOMPRESS, so finit_module could not take them as they
// are. The module is decompressed twice, once to learn its size for the
// cpio header and once into the archive, so memory stays bounded by the
// decoder (see kmod.Open) whatever the module's size.
func writeModule(cw *cpio.Writer, db *kmod.DB, m string) (string, error) {
	size, err := moduleSize(db, m)
	if err != nil {
		return "", err
	}
	name := m + ".ko"
	r, err := db.Open(m)
	if err != nil {
		return "", err
	}
	defer r.Close()
	if err := cw.WriteHeader(&cpio.Header{Name: "lib/modules/" + name, Mode: 0o644, Size: size}); err != nil {
		return "", err
	}
	n, err := io.Copy(cw, io.LimitReader(r, size))
	if err != nil {
		return "", err
	}
	if n != size {
		return "", fmt.Errorf("module %s (%s) changed while it was read: %d bytes, then %d", m, db.Path(m), size, n)
	}
	return name, nil
}

// moduleSize reads the module through and checks it is an ELF object,
// which a damaged compressed file may not decompress to.
func moduleSize(db *kmod.DB, m string) (int64, error) {
	r, err := db.Open(m)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	var magic [4]byte
	n, err := io.ReadFull(r, magic[:])
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return 0, fmt.Errorf("module %s (%s): not an ELF object (%d bytes)", m, db.Path(m), n)
	case err != nil:
		return 0, err // it names the module
	case string(magic[:]) != elf.ELFMAG:
		return 0, fmt.Errorf("module %s (%s): not an ELF object (it starts %q)", m, db.Path(m), magic[:])
	}
	rest, err := io.Copy(io.Discard, r)
	if err != nil {
		return 0, err
	}
	return int64(n) + rest, nil
}
