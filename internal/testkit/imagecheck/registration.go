package imagecheck

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// VerifyRegistration proves the image's registration with Nix itself. It builds a fresh
// store under t.TempDir() holding the extracted store paths (real files, not links into
// the extracted tree), loads extracted/nix-path-registration into it with
// `nix-store --load-db`, and requires that
//
//   - `nix-store --verify --check-contents` passes with no complaint: every path exists
//     and its NAR hash matches the registration;
//   - the loaded database (`--dump-db`) holds exactly the closure, each path with the host
//     database's NAR hash, NAR size, deriver and references;
//   - `nix-store -q --requisites` of each closure root (a path no other closure path
//     references) gives the same set as on the host.
func VerifyRegistration(t testing.TB, extracted string, closure []string) {
	t.Helper()
	RequireTool(t, "nix-store")
	reg, err := os.ReadFile(filepath.Join(extracted, registrationFile))
	if err != nil {
		t.Fatalf("registration: %v", err)
	}
	closure = sortedCopy(closure)

	root := filepath.Join(t.TempDir(), "store-root")
	storeDir := filepath.Join(root, "nix", "store")
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { makeWritable(root) })
	for _, p := range closure {
		if err := copyTree(filepath.Join(extracted, path.Base(p)), filepath.Join(storeDir, path.Base(p))); err != nil {
			t.Fatalf("building the test store: %v", err)
		}
	}

	nix := func(stdin []byte, args ...string) (string, string, error) {
		cmd := exec.Command("nix-store", args...)
		var o, e bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &o, &e
		err := cmd.Run()
		return o.String(), e.String(), err
	}
	if _, e, err := nix(reg, "--store", root, "--load-db"); err != nil {
		t.Fatalf("nix-store --load-db < %s: %v\n%s", registrationFile, err, e)
	}

	// Nix prints its progress on stderr; anything else there is a finding.
	_, e, err := nix(nil, "--store", root, "--verify", "--check-contents")
	var bad []string
	for _, l := range strings.Split(strings.TrimSpace(e), "\n") {
		switch l {
		case "", "reading the Nix store...", "checking path existence...", "checking link hashes...", "checking store hashes...", "checking hashes...":
		default:
			bad = append(bad, l)
		}
	}
	if err != nil || len(bad) > 0 {
		t.Errorf("nix-store --verify --check-contents of the image's paths: %v\n%s", err, strings.Join(bad, "\n"))
	}

	host, e, err := nix(nil, append([]string{"--dump-db"}, closure...)...)
	if err != nil {
		t.Fatalf("nix-store --dump-db on the host: %v\n%s", err, e)
	}
	loaded, e, err := nix(nil, "--store", root, "--dump-db")
	if err != nil {
		t.Fatalf("nix-store --dump-db of the test store: %v\n%s", err, e)
	}
	hostInfos := parseInfos(t, "host --dump-db", host)
	compareInfos(t, hostInfos, parseInfos(t, "loaded registration", loaded))

	for _, r := range roots(hostInfos) {
		h, e1, err1 := nix(nil, "-q", "--requisites", r)
		g, e2, err2 := nix(nil, "--store", root, "-q", "--requisites", r)
		if err1 != nil || err2 != nil {
			t.Errorf("nix-store -q --requisites %s: host %v %s; image %v %s", r, err1, e1, err2, e2)
			continue
		}
		if hs, gs := sortedCopy(strings.Fields(h)), sortedCopy(strings.Fields(g)); !reflect.DeepEqual(hs, gs) {
			missing, extra := diff(hs, gs)
			t.Errorf("requisites of %s: the image's registration lacks %q and adds %q", r, missing, extra)
		}
	}
}

func parseInfos(t testing.TB, what, s string) map[string]nixstore.PathInfo {
	t.Helper()
	infos, err := nixstore.ParseRegistration(strings.NewReader(s))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	m := make(map[string]nixstore.PathInfo, len(infos))
	for _, in := range infos {
		m[in.Path] = in
	}
	return m
}

func compareInfos(t testing.TB, host, got map[string]nixstore.PathInfo) {
	t.Helper()
	missing, extra := diff(keys(host), keys(got))
	if len(missing)+len(extra) > 0 {
		t.Errorf("registration: lacks closure paths %q; lists paths outside the closure %q", missing, extra)
	}
	for _, p := range keys(host) {
		g, ok := got[p]
		if h := host[p]; ok && !reflect.DeepEqual(h, g) {
			t.Errorf("registration of %s:\n  image %+v\n  host  %+v", p, g, h)
		}
	}
}

// roots are the closure's paths no other closure path refers to.
func roots(infos map[string]nixstore.PathInfo) []string {
	referred := map[string]bool{}
	for p, in := range infos {
		for _, r := range in.References {
			if r != p {
				referred[r] = true
			}
		}
	}
	var out []string
	for _, p := range keys(infos) {
		if !referred[p] {
			out = append(out, p)
		}
	}
	return out
}

func keys(m map[string]nixstore.PathInfo) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// diff returns what of want (sorted) is not in got (sorted), and what of got is not in want.
func diff(want, got []string) (missing, extra []string) {
	g := map[string]bool{}
	for _, s := range got {
		g[s] = true
	}
	w := map[string]bool{}
	for _, s := range want {
		w[s] = true
		if !g[s] {
			missing = append(missing, s)
		}
	}
	for _, s := range got {
		if !w[s] {
			extra = append(extra, s)
		}
	}
	return missing, extra
}

// copyTree copies src to dst keeping modes and symlinks. Regular files are hard-linked when
// possible: Nix only reads them, and the data can be gigabytes.
func copyTree(src, dst string) error {
	var dirs []string
	var modes []fs.FileMode
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			// Writable until filled; the store's own mode is set afterwards.
			dirs, modes = append(dirs, to), append(modes, fi.Mode())
			return os.Mkdir(to, 0o755)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case fi.Mode().IsRegular():
			if os.Link(p, to) == nil {
				return nil
			}
			return copyFile(p, to, fi.Mode())
		}
		return fmt.Errorf("%s: unexpected file type %s", p, fi.Mode().Type())
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i], modes[i]&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
}

// makeWritable gives every directory under dir its write bit back, so that t.TempDir's
// cleanup can remove store trees (read-only by design) when not running as root.
func makeWritable(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}
