package bootcheck

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/cpio"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
)

// baseModules reach a virtio disk and let Offset attach a loop device; the
// filesystem's own module (FSType) is added per check.
var baseModules = []string{"virtio_pci", "virtio_blk", "loop"}

// fsModules are what a filesystem needs besides its own module: vfat's
// default codepage and iocharset (Debian's is ascii) are modules too.
var fsModules = map[string][]string{"vfat": {"nls_cp437", "nls_ascii"}}

// DefaultKernel returns the newest /boot/vmlinuz-* whose modules are
// installed in /lib/modules/<version>.
func DefaultKernel() (string, error) {
	k, _, err := kmod.HostKernel()
	if err != nil {
		return "", fmt.Errorf("bootcheck: %w", err)
	}
	return k, nil
}

// findBusybox returns a statically linked busybox: the initramfs has no
// dynamic loader or libc.
func findBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		f.Close()
		if static {
			return p, nil
		}
	}
	return "", errors.New("bootcheck: no statically linked busybox found (install busybox-static)")
}

var (
	baseMu    sync.Mutex
	baseCache = map[string]*baseArchive{}
)

type baseArchive struct {
	gz      []byte   // gzip member holding busybox, modules and directories
	modules []string // load order, for reports
}

// base builds (once per kernel version and filesystem type) the part of the
// initramfs that does not depend on the check. The per-check /init follows
// as a second gzip member: the kernel unpacks concatenated archives in turn.
func base(version, fstype string) (*baseArchive, error) {
	key := version + "\x00" + fstype
	baseMu.Lock()
	defer baseMu.Unlock()
	if b := baseCache[key]; b != nil {
		return b, nil
	}
	db, err := kmod.Load(filepath.Join("/lib/modules", version))
	if err != nil {
		return nil, err
	}
	mods, err := db.Order(append(append(append([]string{}, baseModules...), fstype), fsModules[fstype]...))
	if err != nil {
		return nil, err
	}
	bbPath, err := findBusybox()
	if err != nil {
		return nil, err
	}
	bb, err := os.ReadFile(bbPath)
	if err != nil {
		return nil, fmt.Errorf("bootcheck: %w", err)
	}

	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	cw := cpio.NewWriter(zw)
	add := func(name string, mode fs.FileMode, data []byte) error {
		h := &cpio.Header{Name: name, Mode: mode, Size: int64(len(data))}
		if mode.Type() == fs.ModeSymlink {
			h.Linkname, h.Size = string(data), 0
		}
		if err := cw.WriteHeader(h); err != nil {
			return err
		}
		if mode.Type() == 0 {
			_, err := cw.Write(data)
			return err
		}
		return nil
	}
	for _, d := range []string{"bin", "dev", "lib", "lib/modules", "mnt", "proc", "sys", "tmp"} {
		if err := add(d, fs.ModeDir|0o755, nil); err != nil {
			return nil, err
		}
	}
	// The kernel opens /dev/console for init's stdio before /init can mount
	// devtmpfs; without the node the script's early output would be lost.
	if err := cw.WriteHeader(&cpio.Header{Name: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Devmajor: 5, Devminor: 1}); err != nil {
		return nil, err
	}
	if err := add("bin/busybox", 0o755, bb); err != nil {
		return nil, err
	}
	if err := add("bin/sh", fs.ModeSymlink|0o777, []byte("busybox")); err != nil {
		return nil, err
	}
	var list strings.Builder
	for _, m := range mods {
		// busybox insmod passes the bytes to init_module unchanged.
		data, err := db.ReadELF(m)
		if err != nil {
			return nil, err
		}
		if err := add("lib/modules/"+m+".ko", 0o644, data); err != nil {
			return nil, err
		}
		list.WriteString(m + ".ko\n")
	}
	if err := add("lib/modules/load-order", 0o644, []byte(list.String())); err != nil {
		return nil, err
	}
	if err := cw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	b := &baseArchive{gz: buf.Bytes(), modules: mods}
	baseCache[key] = b
	return b, nil
}

// initArchive returns a gzip member holding only /init.
func initArchive(script string) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	cw := cpio.NewWriter(zw)
	if err := cw.WriteHeader(&cpio.Header{Name: "init", Mode: 0o755, Size: int64(len(script))}); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(cw, script); err != nil {
		return nil, err
	}
	if err := cw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// shQuote quotes s as one word for sh.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// script renders the guest's /init for c (already validated).
func script(c *Check, files []string) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() { echo "BOOTCHECK-FAIL $*"; poweroff -f; sleep 30; }
echo BOOTCHECK-START
while read -r m; do insmod "/lib/modules/$m" || fail "insmod $m"; done </lib/modules/load-order
`)
	fmt.Fprintf(&b, "dev=%s\n", shQuote(c.Device))
	// virtio_blk probes asynchronously; give the node up to 10 s to appear.
	b.WriteString(`n=0
while [ ! -b "$dev" ]; do n=$((n+1)); [ $n -ge 200 ] && fail "no block device $dev"; usleep 50000; done
`)
	if c.Offset > 0 {
		fmt.Fprintf(&b, "losetup -r -o %d /dev/loop0 \"$dev\" || fail \"losetup $dev\"\ndev=/dev/loop0\n", c.Offset)
	}
	fmt.Fprintf(&b, "mount -t %s -o ro \"$dev\" /mnt || fail \"mount $dev\"\n", shQuote(c.FSType))
	b.WriteString(`f() {
	if [ -f "$2" ]; then
		s=$(sha256sum <"$2") || fail "read $1"
		echo "BOOTCHECK-FILE $1 ${s%% *}"
	else
		echo "BOOTCHECK-MISSING $1"
	fi
}
`)
	for _, name := range files {
		fmt.Fprintf(&b, "f %s %s\n", shQuote(name), shQuote(path.Join("/mnt", path.Clean("/"+name))))
	}
	for i, cmd := range c.Commands {
		fmt.Fprintf(&b, "echo BOOTCHECK-CMD-BEGIN %d\n(cd /mnt && eval %s) </dev/null\necho \"BOOTCHECK-CMD-END %d $?\"\n", i, shQuote(cmd), i)
	}
	b.WriteString("umount /mnt\necho BOOTCHECK-OK\npoweroff -f\nsleep 30\n")
	return b.String()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
