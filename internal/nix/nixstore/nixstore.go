// Package nixstore reads the closure of store paths from the host's Nix database and writes
// the registration that lets a fresh Nix database adopt those paths (`nix-store --load-db`).
//
// All access to Nix goes through the Driver interface; the default driver runs the
// `nix-store` program.
//
// # Where the registration goes in an image
//
// nixpkgs' make-disk-image.nix itself (the current revision) writes no registration file:
// for a full image nixos-install fills a real SQLite database under /nix/var/nix/db (its
// registrationTime columns hold the build time, one of the image's non-reproducible bits);
// for onlyNixStore it copies only the store's contents to the filesystem root, and the
// consumer (qemu-vm.nix) loads `closureInfo/registration` itself via `regInfo=` on the kernel
// command line. The file name and the two locations the rest of nixpkgs uses, which NixOS'
// boot code loads with `nix-store --load-db` on first boot, are:
//
//   - full root filesystem (make-ext4-fs.nix, make-btrfs-fs.nix, sd-image, lxc/system
//     tarballs): FullImageRegistrationPath, "/nix-path-registration" at the filesystem root,
//     loaded by boot.postBootCommands (or the register-nix-paths service) and then removed;
//   - store-only filesystem (make-squashfs.nix for the ISO and netboot, mounted under
//     /nix/.ro-store and seen through /nix/store): StoreImageRegistrationPath, a file named
//     "nix-path-registration" at the root of that filesystem, next to the store paths, so
//     /nix/store/nix-path-registration once mounted.
//
// The file content is what closureInfo's `registration` holds and `nix-store --dump-db`
// prints: for each path its path, NAR hash, NAR size, deriver (may be empty), number of
// references and the references, one per line. It carries no registration time: Nix 2.8's
// `--load-db` stamps each path with the time of loading, so a registration file is
// deterministic while a database made from it is not.
package nixstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const (
	// RegistrationFile is the name nixpkgs gives the registration inside an image.
	RegistrationFile = "nix-path-registration"
	// FullImageRegistrationPath is where a full NixOS root filesystem carries it.
	FullImageRegistrationPath = "/" + RegistrationFile
	// StoreImageRegistrationPath is where a store-only filesystem carries it, relative to
	// the filesystem root (which is mounted as the store directory).
	StoreImageRegistrationPath = RegistrationFile
	// DefaultStoreDir is Nix's default store directory.
	DefaultStoreDir = "/nix/store"
)

// PathInfo is what the Nix database knows about one valid store path.
type PathInfo struct {
	Path string
	// NarHash is "sha256:" followed by 64 lowercase hex digits.
	NarHash string
	// Deriver is the .drv the path was built by, or "" (added paths, text files).
	Deriver string
	NarSize int64
	// References are store paths, sorted; a path may reference itself.
	References []string
}

// Driver is the part of Nix this package needs.
type Driver interface {
	// Valid reports whether path is a registered, valid store path.
	Valid(ctx context.Context, path string) (bool, error)
	// Requisites lists the closure of roots (the roots included), in any order.
	Requisites(ctx context.Context, roots []string) ([]string, error)
	// DumpDB writes the registration of exactly paths, in --dump-db format, to w.
	DumpDB(ctx context.Context, paths []string, w io.Writer) error
}

// Store reads closures from the Nix store at Dir.
type Store struct {
	// Dir is the store directory; "" means DefaultStoreDir.
	Dir string
	// NixStore is the nix-store binary for the default driver; "" means "nix-store".
	NixStore string
	// Driver overrides the default (the NixStore program), for tests.
	Driver Driver
}

func (s *Store) dir() string {
	if s.Dir == "" {
		return DefaultStoreDir
	}
	return filepath.Clean(s.Dir)
}

func (s *Store) driver() Driver {
	if s.Driver != nil {
		return s.Driver
	}
	bin := s.NixStore
	if bin == "" {
		bin = "nix-store"
	}
	return &ExecDriver{Bin: bin}
}

// Check returns a clear error, naming path, unless path is an absolute store path directly
// inside Dir that exists and is registered as valid in the Nix database.
func (s *Store) Check(path string) error {
	return s.check(context.Background(), s.driver(), path)
}

func (s *Store) check(ctx context.Context, d Driver, path string) error {
	dir := s.dir()
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%q is not a store path: not an absolute path", path)
	}
	clean := filepath.Clean(path)
	rel, err := filepath.Rel(dir, clean)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("%q is not a store path: not inside the store %s", path, dir)
	}
	if i := strings.IndexByte(rel, '/'); i >= 0 {
		return fmt.Errorf("%q is not a store path but a file inside one; use %s",
			path, filepath.Join(dir, rel[:i]))
	}
	if clean != path {
		return fmt.Errorf("%q is not a store path: not in canonical form (%s)", path, clean)
	}
	if _, err := os.Lstat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("store path %s does not exist", path)
		}
		return fmt.Errorf("store path %s: %w", path, err)
	}
	ok, err := d.Valid(ctx, path)
	if err != nil {
		return fmt.Errorf("checking validity of store path %s: %w", path, err)
	}
	if !ok {
		return fmt.Errorf("store path %s exists but is not registered as valid in the Nix database "+
			"(built outside Nix, or a leftover of an interrupted build?)", path)
	}
	return nil
}

// Closure returns the PathInfo of every path in the closure of roots, sorted by path,
// without duplicates. Each root is checked first (see Check).
func (s *Store) Closure(ctx context.Context, roots []string) ([]PathInfo, error) {
	if len(roots) == 0 {
		return nil, errors.New("closure: no root store paths given")
	}
	d := s.driver()
	for _, r := range roots {
		if err := s.check(ctx, d, r); err != nil {
			return nil, err
		}
	}
	paths, err := d.Requisites(ctx, roots)
	if err != nil {
		return nil, fmt.Errorf("closure of %s: %w", strings.Join(roots, " "), err)
	}
	paths = sortedUnique(paths)
	if len(paths) == 0 {
		return nil, fmt.Errorf("closure of %s: nix-store listed no paths", strings.Join(roots, " "))
	}

	// Batches keep the argument list well under ARG_MAX even for closures of many
	// thousands of paths.
	const batch = 512
	infos := make([]PathInfo, 0, len(paths))
	for i := 0; i < len(paths); i += batch {
		part := paths[i:min(i+batch, len(paths))]
		var buf bytes.Buffer
		if err := d.DumpDB(ctx, part, &buf); err != nil {
			return nil, fmt.Errorf("reading the Nix database: %w", err)
		}
		got, err := ParseRegistration(&buf)
		if err != nil {
			return nil, fmt.Errorf("reading the Nix database: %w", err)
		}
		infos = append(infos, got...)
	}
	sortInfos(infos)
	infos = uniqueInfos(infos)
	// The dump must describe exactly the requisites: anything else means the database
	// changed under us or the output was misread.
	if len(infos) != len(paths) {
		return nil, fmt.Errorf("nix-store --dump-db described %d paths, expected the %d requisites",
			len(infos), len(paths))
	}
	for i := range infos {
		if infos[i].Path != paths[i] {
			return nil, fmt.Errorf("nix-store --dump-db described %s, expected %s", infos[i].Path, paths[i])
		}
	}
	return infos, nil
}

// ExecDriver runs the nix-store program.
type ExecDriver struct {
	Bin string
	// Args go before every command's own arguments, e.g. "--store", "/tmp/root".
	Args []string
}

func (e *ExecDriver) cmd(ctx context.Context, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, e.Bin, append(append([]string{}, e.Args...), args...)...)
	c.Env = append(os.Environ(), "LC_ALL=C")
	c.WaitDelay = 2 * time.Second // cancelled: a leftover child holding our pipes does not hold us
	return c
}

func (e *ExecDriver) run(ctx context.Context, stdout io.Writer, args ...string) error {
	c := e.cmd(ctx, args...)
	var stderr bytes.Buffer
	c.Stdout = stdout
	c.Stderr = &stderr
	if err := c.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return fmt.Errorf("%s %s: %w", e.Bin, args[0], err)
		}
		return fmt.Errorf("%s %s: %w: %s", e.Bin, args[0], err, msg)
	}
	return nil
}

// Valid runs `nix-store --check-validity`, which exits 1 for an invalid path.
func (e *ExecDriver) Valid(ctx context.Context, path string) (bool, error) {
	c := e.cmd(ctx, "--check-validity", path)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	err := c.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1 && strings.Contains(stderr.String(), "is not valid"):
		return false, nil
	default:
		return false, fmt.Errorf("%s --check-validity: %w: %s", e.Bin, err, strings.TrimSpace(stderr.String()))
	}
}

// Requisites runs `nix-store --query --requisites`.
func (e *ExecDriver) Requisites(ctx context.Context, roots []string) ([]string, error) {
	var out bytes.Buffer
	if err := e.run(ctx, &out, append([]string{"--query", "--requisites"}, roots...)...); err != nil {
		return nil, err
	}
	return strings.Fields(out.String()), nil
}

// DumpDB runs `nix-store --dump-db paths...`.
func (e *ExecDriver) DumpDB(ctx context.Context, paths []string, w io.Writer) error {
	return e.run(ctx, w, append([]string{"--dump-db"}, paths...)...)
}

// WriteRegistration writes infos in the format `nix-store --load-db` reads, byte for byte
// what `nix-store --dump-db` prints for the same paths: sorted by path, references sorted,
// the NAR hash as bare hex. Duplicate paths and malformed fields are errors.
func WriteRegistration(w io.Writer, infos []PathInfo) error {
	sorted, hashes, err := checkRegistration(infos)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	for i, in := range sorted {
		fmt.Fprintf(bw, "%s\n%s\n%d\n%s\n%d\n", in.Path, strings.TrimPrefix(hashes[i], "sha256:"),
			in.NarSize, in.Deriver, len(in.References))
		for _, r := range in.References {
			bw.WriteString(r)
			bw.WriteByte('\n')
		}
	}
	return bw.Flush()
}

// checkRegistration is what a registration holds of infos, checked: a copy
// sorted by path, each path's references sorted and unique, and the NAR
// hashes normalised ("sha256:<hex>"). Duplicate paths and malformed fields
// are errors.
func checkRegistration(infos []PathInfo) (sorted []PathInfo, hashes []string, err error) {
	sorted = make([]PathInfo, len(infos))
	copy(sorted, infos)
	sortInfos(sorted)
	hashes = make([]string, len(sorted))
	for i := range sorted {
		in := &sorted[i]
		if i > 0 && in.Path == sorted[i-1].Path {
			return nil, nil, fmt.Errorf("registration: %s listed twice", in.Path)
		}
		if err := checkLine("path", in.Path, in.Path, true); err != nil {
			return nil, nil, err
		}
		if err := checkLine("deriver", in.Path, in.Deriver, false); err != nil {
			return nil, nil, err
		}
		if hashes[i], err = ParseNarHash(in.NarHash); err != nil {
			return nil, nil, fmt.Errorf("registration: %s: %w", in.Path, err)
		}
		if in.NarSize < 0 {
			return nil, nil, fmt.Errorf("registration: %s: negative NAR size %d", in.Path, in.NarSize)
		}
		in.References = sortedUnique(append([]string(nil), in.References...))
		for _, r := range in.References {
			if err := checkLine("reference", in.Path, r, true); err != nil {
				return nil, nil, err
			}
		}
	}
	return sorted, hashes, nil
}

func checkLine(what, path, v string, required bool) error {
	if required && v == "" {
		return fmt.Errorf("registration: %s: empty %s", path, what)
	}
	if v != "" && !strings.HasPrefix(v, "/") {
		return fmt.Errorf("registration: %s: %s %q is not an absolute path", path, what, v)
	}
	if strings.ContainsAny(v, "\n\r") {
		return fmt.Errorf("registration: %s: %s %q contains a newline", path, what, v)
	}
	return nil
}

// ParseRegistration reads a registration as written by WriteRegistration, `nix-store
// --dump-db` or nixpkgs' closureInfo (whose hashes are "sha256:<base32>"). The result is in
// file order, with NarHash normalised to "sha256:<hex>" and references sorted.
func ParseRegistration(r io.Reader) ([]PathInfo, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	next := func(what string) (string, error) {
		if !sc.Scan() {
			if err := sc.Err(); err != nil {
				return "", fmt.Errorf("registration line %d: %w", line+1, err)
			}
			return "", fmt.Errorf("registration line %d: unexpected end of input, want %s", line+1, what)
		}
		line++
		return sc.Text(), nil
	}
	var infos []PathInfo
	blank := 0 // line of the first blank line seen, where only blank lines may follow
	for sc.Scan() {
		line++
		path := sc.Text()
		if path == "" {
			if blank == 0 {
				blank = line
			}
			continue
		}
		if blank != 0 {
			return nil, fmt.Errorf("registration line %d: empty store path", blank)
		}
		if !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("registration line %d: %q is not an absolute store path", line, path)
		}
		info := PathInfo{Path: path}
		s, err := next("NAR hash")
		if err != nil {
			return nil, err
		}
		if info.NarHash, err = ParseNarHash(s); err != nil {
			return nil, fmt.Errorf("registration line %d (%s): %w", line, path, err)
		}
		if s, err = next("NAR size"); err != nil {
			return nil, err
		}
		if info.NarSize, err = parseCount(s); err != nil {
			return nil, fmt.Errorf("registration line %d (%s): NAR size: %w", line, path, err)
		}
		if info.Deriver, err = next("deriver"); err != nil {
			return nil, err
		}
		if s, err = next("reference count"); err != nil {
			return nil, err
		}
		n, err := parseCount(s)
		if err != nil {
			return nil, fmt.Errorf("registration line %d (%s): reference count: %w", line, path, err)
		}
		for k := int64(0); k < n; k++ {
			ref, err := next("reference")
			if err != nil {
				return nil, err
			}
			if !strings.HasPrefix(ref, "/") {
				return nil, fmt.Errorf("registration line %d (%s): reference %q is not an absolute path", line, path, ref)
			}
			info.References = append(info.References, ref)
		}
		info.References = sortedUnique(info.References)
		infos = append(infos, info)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("registration line %d: %w", line+1, err)
	}
	return infos, nil
}

func parseCount(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, fmt.Errorf("%q is not a count", s)
	}
	var n int64
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a count", s)
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

func sortedUnique(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func sortInfos(infos []PathInfo) {
	sort.SliceStable(infos, func(i, j int) bool { return infos[i].Path < infos[j].Path })
}

func uniqueInfos(infos []PathInfo) []PathInfo {
	out := infos[:0]
	for i, in := range infos {
		if i == 0 || in.Path != infos[i-1].Path {
			out = append(out, in)
		}
	}
	return out
}
