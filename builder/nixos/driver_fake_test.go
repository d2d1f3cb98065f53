package nixos

import (
	"context"
	"os"
	"path/filepath"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// The step tests' stand-ins for the host programs (driver.go); QEMU's is in
// qemu_fake_test.go.

// fakeNix builds nothing: it answers with system, or fails with err.
type fakeNix struct {
	system string
	err    error
	built  []string // "flake <ref> <name>", "file <file> <attr>"

	addErr   error
	added    string            // the directory AddToStore was given
	addedAs  string            // the store path it answers
	snapshot map[string]string // what the added directory held: relative path -> link target, or "" for others
}

func (f *fakeNix) BuildFlake(_ context.Context, ref, name string) (string, error) {
	f.built = append(f.built, "flake "+ref+" "+name)
	return f.system, f.err
}

func (f *fakeNix) BuildFile(_ context.Context, file, attr string) (string, error) {
	f.built = append(f.built, "file "+file+" "+attr)
	return f.system, f.err
}

// AddToStore notes what dir holds: the step removes it once Run returns.
func (f *fakeNix) AddToStore(_ context.Context, dir string) (string, error) {
	f.added, f.snapshot = dir, map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		f.snapshot[rel], _ = os.Readlink(p)
		return nil
	})
	if f.addErr != nil {
		return "", f.addErr
	}
	return f.addedAs, nil
}

// fakeStore is a Nix database that holds closure; checkErr and closureErr
// make it refuse.
type fakeStore struct {
	closure    []nixstore.PathInfo
	checkErr   error
	closureErr error
	roots      []string // what Closure was asked for
}

func (f *fakeStore) Check(string) error { return f.checkErr }

func (f *fakeStore) Closure(_ context.Context, roots []string) ([]nixstore.PathInfo, error) {
	f.roots = roots
	return f.closure, f.closureErr
}

// fakeNixDB leaves what nix-store --load-db does, an empty database and the
// profiles directory, or fails with err.
type fakeNixDB struct {
	err     error
	regTime int64
}

func (f *fakeNixDB) Write(_ context.Context, root string, _ []nixstore.PathInfo, regTime int64) error {
	f.regTime = regTime
	if f.err != nil {
		return f.err
	}
	for _, dir := range []string{"nix/var/nix/profiles", filepath.Dir(nixstore.DBPath)} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(root, nixstore.DBPath), nil, 0o644)
}

// fakeCopier copies with Go rather than cp, or fails with err.
type fakeCopier struct{ err error }

func (f fakeCopier) CopyTree(_ context.Context, src, dst string) error {
	if f.err != nil {
		return f.err
	}
	return os.CopyFS(dst, os.DirFS(src))
}

// fakeQemuImg records its conversions and writes "converted" as the
// output, or fails with err.
type fakeQemuImg struct {
	err      error
	converts []fakeConversion
}

type fakeConversion struct {
	spec                qemuimg.Spec
	src, srcFormat, dst string
}

func (f *fakeQemuImg) Convert(_ context.Context, s qemuimg.Spec, src, srcFormat, dst string, progress func(float64)) error {
	f.converts = append(f.converts, fakeConversion{s, src, srcFormat, dst})
	if f.err != nil {
		return f.err
	}
	progress(100)
	return os.WriteFile(dst, []byte("converted"), 0o644)
}

func (f *fakeQemuImg) Info(context.Context, string, string) (qemuimg.Info, error) {
	return qemuimg.Info{}, f.err
}
