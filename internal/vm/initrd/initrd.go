// Package initrd assembles the installer VM's initrd: the plugin binary as
// /init and the kernel modules the agent needs, resolved like modprobe.
package initrd

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/cpio"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
)

// DefaultModules is what the installer needs from a modular kernel: the
// virtio disk and serial port, ext4, FAT (Debian's vfat mounts need
// nls_ascii for its default iocharset besides the codepage) and efivarfs.
// Those this kernel neither ships nor builds in are skipped.
var DefaultModules = []string{
	"virtio_pci", "virtio_blk", "virtio_console",
	"ext4", "vfat", "nls_cp437", "nls_iso8859-1", "nls_ascii", "efivarfs",
}

// Options says what goes into the installer initrd.
type Options struct {
	// Agent is the static binary to install as /init, normally the
	// plugin itself (os.Executable()).
	Agent string
	// ModulesDir is <kernel-modules>/lib/modules/<version> of the kernel
	// that will boot the initrd; empty for a kernel with everything built in.
	ModulesDir string
	// Modules to load, with their dependencies; nil means DefaultModules.
	// An explicitly named module the kernel does not know is an error.
	Modules []string
}

// Build writes a gzip-compressed cpio archive holding the agent as
// /init and the modules it loads at boot (lib/modules/load-order). The
// output depends only on the inputs' contents.
func Build(w io.Writer, o Options) error {
	agent, err := os.Open(o.Agent)
	if err != nil {
		return fmt.Errorf("guest initrd: %w", err)
	}
	defer agent.Close()
	st, err := agent.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("guest initrd: agent %s is not a regular file (%v)", o.Agent, err)
	}

	var db *kmod.DB
	var mods []string
	if o.ModulesDir != "" {
		if db, err = kmod.Load(o.ModulesDir); err != nil {
			return fmt.Errorf("guest initrd: %w", err)
		}
		roots := o.Modules
		if roots == nil {
			for _, m := range DefaultModules {
				if db.Known(m) {
					roots = append(roots, m)
				}
			}
		}
		if mods, err = db.Order(roots); err != nil {
			return fmt.Errorf("guest initrd: %w", err)
		}
	}

	// Level 6 (the default) is within a few percent of best on a Go binary
	// at a third of the time.
	zw, _ := gzip.NewWriterLevel(w, gzip.DefaultCompression)
	cw := cpio.NewWriter(zw)
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
	if err := file("init", 0o755, st.Size(), agent); err != nil {
		return fmt.Errorf("guest initrd: %s: %w", o.Agent, err)
	}
	var order strings.Builder
	for _, m := range mods {
		name, data, err := moduleFile(db, m)
		if err != nil {
			return err
		}
		if err := file("lib/modules/"+name, 0o644, int64(len(data)), bytes.NewReader(data)); err != nil {
			return err
		}
		order.WriteString(name + "\n")
	}
	if err := file("lib/modules/load-order", 0o644, int64(order.Len()), strings.NewReader(order.String())); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// moduleFile returns the name and bytes to ship for module m. xz and zstd
// modules go as they are: the kernel that compressed them decompresses
// them in finit_module (CONFIG_MODULE_DECOMPRESS). gzip is expanded here,
// which costs nothing and spares needing that kernel option for it.
func moduleFile(db *kmod.DB, m string) (string, []byte, error) {
	p := db.Path(m)
	switch {
	case strings.HasSuffix(p, ".ko.gz"):
		data, err := db.ReadELF(m)
		return m + ".ko", data, err
	case strings.HasSuffix(p, ".ko"), strings.HasSuffix(p, ".ko.xz"), strings.HasSuffix(p, ".ko.zst"):
		data, err := os.ReadFile(p)
		if err != nil {
			return "", nil, fmt.Errorf("guest initrd: %w", err)
		}
		return m + p[strings.LastIndex(p, ".ko"):], data, nil
	}
	return "", nil, fmt.Errorf("guest initrd: module %s: unsupported file %s", m, p)
}
