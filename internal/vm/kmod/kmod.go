// Package kmod resolves Linux kernel modules the way modprobe would, from a
// modules directory (<prefix>/lib/modules/<version>): modules.dep for hard
// dependencies, modules.softdep "pre:" entries (ext4 → crc32c) and
// modules.builtin, so initramfs builders can ship a short, ordered list.
package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
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

// ReadELF returns the module's uncompressed ELF bytes, for loaders that
// pass them to init_module unchanged (busybox insmod). .xz and .zst need
// the xz and zstd tools; gzip is done in process.
func (db *DB) ReadELF(name string) ([]byte, error) {
	p := db.Path(name)
	if p == "" {
		return nil, fmt.Errorf("kmod: module %s is not loadable", name)
	}
	switch {
	case strings.HasSuffix(p, ".ko"):
		return readFile(p)
	case strings.HasSuffix(p, ".ko.gz"):
		data, err := readFile(p)
		if err != nil {
			return nil, err
		}
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: %w", p, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(p, ".ko.xz"), strings.HasSuffix(p, ".ko.zst"):
		tool := "xz"
		if strings.HasSuffix(p, ".zst") {
			tool = "zstd"
		}
		out, err := exec.Command(tool, "-dc", p).Output()
		if err != nil {
			return nil, fmt.Errorf("kmod: decompressing %s with %s: %w", p, tool, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("kmod: %s: unknown module compression", p)
}

func readFile(p string) ([]byte, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("kmod: %w", err)
	}
	return data, nil
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
