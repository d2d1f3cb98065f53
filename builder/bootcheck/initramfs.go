package bootcheck

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/initrd"
)

// baseModules reach a virtio disk and let Offset attach a loop device; the
// filesystem's own module (FSType) is added per check.
var baseModules = []string{"virtio_pci", "virtio_blk", "loop"}

// DefaultKernel returns the newest /boot/vmlinuz-* whose modules are
// installed in /lib/modules/<version>.
func DefaultKernel() (string, error) {
	paths, _ := filepath.Glob("/boot/vmlinuz-*")
	var best, bestVer string
	for _, p := range paths {
		v := strings.TrimPrefix(filepath.Base(p), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err != nil {
			continue
		}
		if best == "" || versionLess(bestVer, v) {
			best, bestVer = p, v
		}
	}
	if best == "" {
		return "", errors.New("bootcheck: no /boot/vmlinuz-* with matching /lib/modules/<version>/modules.dep")
	}
	return best, nil
}

// versionLess compares dotted/dashed versions numerically where both parts
// are numbers, so 6.10 sorts after 6.9.
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' })
	}
	as, bs := split(a), split(b)
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		an, aerr := strconv.Atoi(as[i])
		bn, berr := strconv.Atoi(bs[i])
		if aerr == nil && berr == nil {
			return an < bn
		}
		return as[i] < bs[i]
	}
	return len(as) < len(bs)
}

// modName is the kernel's canonical module name: "-" and "_" are equivalent.
func modName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

type moduleDB struct {
	dir     string
	paths   map[string]string   // name -> path relative to dir
	deps    map[string][]string // name -> names it needs
	softPre map[string][]string // name -> modprobe "pre:" soft dependencies (names or aliases)
	aliases map[string][]string // exact alias -> names
	builtin map[string]bool
}

func loadModuleDB(dir string) (*moduleDB, error) {
	db := &moduleDB{dir: dir, paths: map[string]string{}, deps: map[string][]string{},
		softPre: map[string][]string{}, aliases: map[string][]string{}, builtin: map[string]bool{}}
	err := eachLine(filepath.Join(dir, "modules.dep"), true, func(line string) {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		n := modName(mod)
		db.paths[n] = mod
		for _, d := range strings.Fields(deps) {
			db.deps[n] = append(db.deps[n], modName(d))
		}
	})
	if err != nil {
		return nil, err
	}
	// The remaining files only refine the answer; a kernel without them
	// still works when nothing needs a soft dependency.
	_ = eachLine(filepath.Join(dir, "modules.builtin"), false, func(line string) { db.builtin[modName(line)] = true })
	_ = eachLine(filepath.Join(dir, "modules.alias"), false, func(line string) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "alias" && !strings.ContainsAny(f[1], "*?[") {
			db.aliases[f[1]] = append(db.aliases[f[1]], modName(f[2]))
		}
	})
	_ = eachLine(filepath.Join(dir, "modules.softdep"), false, func(line string) {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "softdep" {
			return
		}
		n := modName(f[1])
		pre := false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					db.softPre[n] = append(db.softPre[n], w)
				}
			}
		}
	})
	return db, nil
}

func eachLine(file string, required bool, fn func(string)) error {
	f, err := os.Open(file)
	if err != nil {
		if !required {
			return nil
		}
		return fmt.Errorf("bootcheck: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && line[0] != '#' {
			fn(line)
		}
	}
	return sc.Err()
}

// resolveSoft turns a soft dependency (a module name or an alias such as
// "crypto-crc32c") into one loadable module. Among several providers the
// generic C implementation is chosen: accelerated ones (crc32c_intel) refuse
// to load on CPUs TCG emulates without the needed instructions.
func (db *moduleDB) resolveSoft(s string) (string, bool) {
	if n := modName(s); db.paths[n] != "" || db.builtin[n] {
		return n, true
	}
	cands := db.aliases[s]
	for _, c := range cands {
		if strings.HasSuffix(c, "_generic") {
			return c, true
		}
	}
	if len(cands) > 0 {
		return cands[0], true
	}
	return "", false
}

// order returns the modules to insmod, dependencies first, skipping those
// built into the kernel.
func (db *moduleDB) order(roots []string) ([]string, error) {
	var out []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("bootcheck: module dependency cycle at %s", n)
		case 2:
			return nil
		}
		if db.paths[n] == "" {
			if db.builtin[n] {
				state[n] = 2
				return nil
			}
			return fmt.Errorf("bootcheck: module %s is neither in %s/modules.dep nor built in", n, db.dir)
		}
		state[n] = 1
		for _, s := range db.softPre[n] {
			if m, ok := db.resolveSoft(s); ok {
				if err := visit(m); err != nil {
					return err
				}
			}
		}
		for _, d := range db.deps[n] {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[n] = 2
		out = append(out, n)
		return nil
	}
	for _, r := range roots {
		if err := visit(modName(r)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readModule returns the module's ELF bytes. busybox insmod passes them to
// init_module unchanged, so compressed modules are expanded here.
func (db *moduleDB) readModule(n string) ([]byte, error) {
	p := filepath.Join(db.dir, db.paths[n])
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("bootcheck: %w", err)
	}
	switch {
	case strings.HasSuffix(p, ".ko"):
		return data, nil
	case strings.HasSuffix(p, ".ko.gz"):
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("bootcheck: %s: %w", p, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(p, ".ko.xz"), strings.HasSuffix(p, ".ko.zst"):
		tool := "xz"
		if strings.HasSuffix(p, ".zst") {
			tool = "zstd"
		}
		out, err := exec.Command(tool, "-dc", p).Output()
		if err != nil {
			return nil, fmt.Errorf("bootcheck: decompressing %s with %s: %w", p, tool, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("bootcheck: %s: unknown module compression", p)
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
	db, err := loadModuleDB(filepath.Join("/lib/modules", version))
	if err != nil {
		return nil, err
	}
	mods, err := db.order(append(append([]string{}, baseModules...), fstype))
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
	cw := initrd.NewWriter(zw)
	add := func(name string, mode fs.FileMode, data []byte) error {
		h := &initrd.Header{Name: name, Mode: mode, Size: int64(len(data))}
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
	if err := cw.WriteHeader(&initrd.Header{Name: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Devmajor: 5, Devminor: 1}); err != nil {
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
		data, err := db.readModule(m)
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
	cw := initrd.NewWriter(zw)
	if err := cw.WriteHeader(&initrd.Header{Name: "init", Mode: 0o755, Size: int64(len(script))}); err != nil {
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
