// Package kmod resolves Linux kernel modules the way modprobe would, from a
// modules directory (<prefix>/lib/modules/<version>): modules.dep for hard
// dependencies, modules.softdep "pre:" entries (ext4 → crc32c) and
// modules.builtin, so initramfs builders can ship a short, ordered list.
package kmod

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Name is the kernel's canonical module name of a module name or path:
// "-" and "_" are equivalent and the .ko[.xz|.zst|.gz] suffix is dropped.
func Name(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// DB is the module index of one kernel.
type DB struct {
	dir     string
	paths   map[string]string   // name -> path relative to dir
	deps    map[string][]string // name -> names it needs
	softPre map[string][]string // name -> modprobe "pre:" soft dependencies (names or aliases)
	aliases map[string][]string // exact alias -> names
	builtin map[string]bool
}

// Load reads the index files of dir. Only modules.dep is required.
func Load(dir string) (*DB, error) {
	db := &DB{dir: dir, paths: map[string]string{}, deps: map[string][]string{},
		softPre: map[string][]string{}, aliases: map[string][]string{}, builtin: map[string]bool{}}
	err := eachLine(filepath.Join(dir, "modules.dep"), true, func(line string) {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		n := Name(mod)
		db.paths[n] = mod
		for _, d := range strings.Fields(deps) {
			db.deps[n] = append(db.deps[n], Name(d))
		}
	})
	if err != nil {
		return nil, err
	}
	// The remaining files only refine the answer; a kernel without them
	// still works when nothing needs a soft dependency.
	_ = eachLine(filepath.Join(dir, "modules.builtin"), false, func(line string) { db.builtin[Name(line)] = true })
	_ = eachLine(filepath.Join(dir, "modules.alias"), false, func(line string) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "alias" && !strings.ContainsAny(f[1], "*?[") {
			db.aliases[f[1]] = append(db.aliases[f[1]], Name(f[2]))
		}
	})
	_ = eachLine(filepath.Join(dir, "modules.softdep"), false, func(line string) {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "softdep" {
			return
		}
		n := Name(f[1])
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
		return fmt.Errorf("kmod: %w", err)
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

// Dir is the modules directory the index was read from.
func (db *DB) Dir() string { return db.dir }

// Path is the module's file, or "" when the module is not loadable.
func (db *DB) Path(name string) string {
	if p := db.paths[Name(name)]; p != "" {
		return filepath.Join(db.dir, p)
	}
	return ""
}

// Deps lists the hard dependencies of name from modules.dep.
func (db *DB) Deps(name string) []string { return db.deps[Name(name)] }

// Builtin reports whether name is compiled into the kernel.
func (db *DB) Builtin(name string) bool { return db.builtin[Name(name)] }

// Known reports whether name is either loadable or built in.
func (db *DB) Known(name string) bool { n := Name(name); return db.paths[n] != "" || db.builtin[n] }

// resolveSoft turns a soft dependency (a module name or an alias such as
// "crypto-crc32c") into one loadable module. Among several providers the
// generic C implementation is chosen: accelerated ones (crc32c_intel) refuse
// to load on CPUs TCG emulates without the needed instructions.
func (db *DB) resolveSoft(s string) (string, bool) {
	if n := Name(s); db.Known(n) {
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

// Order returns the modules to load for roots, dependencies first, skipping
// those built into the kernel. A root that is neither loadable nor built in
// is an error.
func (db *DB) Order(roots []string) ([]string, error) {
	var out []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("kmod: module dependency cycle at %s", n)
		case 2:
			return nil
		}
		if db.paths[n] == "" {
			if db.builtin[n] {
				state[n] = 2
				return nil
			}
			return fmt.Errorf("kmod: module %s is neither in %s/modules.dep nor built in", n, db.dir)
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
		if err := visit(Name(r)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// MaxModuleSize bounds a module's decompressed size. The largest in-tree
// modules (amdgpu) are a few tens of MiB; more than this is a corrupt file
// or a decompression bomb, and would not fit the installer VM's memory.
const MaxModuleSize = 128 << 20

// Open returns a stream of the module's ELF bytes: .ko as it is, .ko.gz,
// .ko.xz and .ko.zst decompressed in process, as kmod does in userspace
// (kernels without CONFIG_MODULE_DECOMPRESS, such as NixOS's, cannot
// load compressed modules themselves). Memory stays bounded by the
// decoder's window; a stream longer than MaxModuleSize fails. Errors
// name the module and its file.
func (db *DB) Open(name string) (io.ReadCloser, error) {
	p := db.Path(name)
	if p == "" {
		return nil, fmt.Errorf("kmod: module %s is not loadable", name)
	}
	fail := func(err error) error { return fmt.Errorf("kmod: module %s (%s): %w", Name(name), p, err) }
	f, err := os.Open(p)
	if err != nil {
		return nil, fail(err)
	}
	var r io.Reader
	closer := func() {}
	format := ""
	switch {
	case strings.HasSuffix(p, ".ko"):
		r = f
	case strings.HasSuffix(p, ".ko.gz"):
		zr, err := gzip.NewReader(bufio.NewReader(f))
		if err != nil {
			f.Close()
			return nil, fail(fmt.Errorf("gzip: %w", err))
		}
		r, format = zr, "gzip"
	case strings.HasSuffix(p, ".ko.xz"):
		// The dictionary named in the header is allocated but only
		// touched as output is produced, so MaxModuleSize bounds what
		// is resident.
		xr, err := xz.NewReader(bufio.NewReader(f))
		if err != nil {
			f.Close()
			return nil, fail(fmt.Errorf("xz: %w", err))
		}
		r, format = xr, "xz"
	case strings.HasSuffix(p, ".ko.zst"):
		zr, err := zstd.NewReader(bufio.NewReader(f), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(MaxModuleSize+1), zstd.WithDecoderMaxWindow(MaxModuleSize))
		if err != nil {
			f.Close()
			return nil, fail(fmt.Errorf("zstd: %w", err))
		}
		r, closer, format = zr, zr.Close, "zstd"
	default:
		f.Close()
		return nil, fail(errors.New("unknown module compression (want .ko, .ko.gz, .ko.xz or .ko.zst)"))
	}
	return &moduleReader{r: r, f: f, closer: closer, fail: fail, format: format, left: MaxModuleSize}, nil
}

// moduleReader is a decompressed module: it names the module in its
// errors and fails past MaxModuleSize.
type moduleReader struct {
	r      io.Reader
	f      *os.File
	closer func()
	fail   func(error) error
	format string // "" for a plain .ko
	left   int64
}

func (m *moduleReader) Read(p []byte) (int, error) {
	if m.left <= 0 {
		// One byte more than the limit says whether it ends here.
		var b [1]byte
		if n, err := m.r.Read(b[:]); n > 0 {
			return 0, m.fail(fmt.Errorf("decompresses to more than %d MiB (kmod.MaxModuleSize): not a kernel module, or a corrupt file", MaxModuleSize>>20))
		} else if err != nil {
			return 0, m.wrap(err)
		}
		return 0, nil
	}
	if int64(len(p)) > m.left {
		p = p[:m.left]
	}
	n, err := m.r.Read(p)
	m.left -= int64(n)
	return n, m.wrap(err)
}

func (m *moduleReader) wrap(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if m.format == "" {
		return m.fail(err)
	}
	if err == io.ErrUnexpectedEOF {
		return m.fail(fmt.Errorf("decompressing %s: truncated data", m.format))
	}
	return m.fail(fmt.Errorf("decompressing %s: %w", m.format, err))
}

func (m *moduleReader) Close() error {
	m.closer()
	return m.f.Close()
}

// ReadELF returns the module's uncompressed ELF bytes (see Open), for
// loaders that pass them to init_module unchanged (busybox insmod).
func (db *DB) ReadELF(name string) ([]byte, error) {
	r, err := db.Open(name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// HostKernel returns the newest /boot/vmlinuz-* whose modules are installed
// in /lib/modules/<version>, and that modules directory.
func HostKernel() (kernel, modulesDir string, err error) {
	paths, _ := filepath.Glob("/boot/vmlinuz-*")
	var bestVer string
	for _, p := range paths {
		v := strings.TrimPrefix(filepath.Base(p), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err != nil {
			continue
		}
		if kernel == "" || VersionLess(bestVer, v) {
			kernel, bestVer = p, v
		}
	}
	if kernel == "" {
		return "", "", errors.New("kmod: no /boot/vmlinuz-* with matching /lib/modules/<version>/modules.dep")
	}
	return kernel, filepath.Join("/lib/modules", bestVer), nil
}

// VersionLess compares dotted/dashed versions numerically where both parts
// are numbers, so 6.10 sorts after 6.9.
func VersionLess(a, b string) bool {
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
