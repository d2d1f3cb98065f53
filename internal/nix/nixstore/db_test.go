package nixstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
)

// The database is reproducible (the registration time is the only input
// besides the closure), registers exactly the closure, and the real Nix
// reads it as it reads the one its own nix-store --load-db makes from the
// same registration.
func TestDBWriter(t *testing.T) {
	roots := fixtures.Build(t, "system-bios")
	ctx := context.Background()
	infos, err := (&Store{}).Closure(ctx, roots)
	if err != nil {
		t.Fatal(err)
	}
	write := func(regTime int64) (string, [32]byte) {
		root := t.TempDir()
		if err := (DBWriter{}).Write(ctx, root, infos, regTime); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(root, DBPath))
		if err != nil {
			t.Fatal(err)
		}
		return root, sha256.Sum256(b)
	}
	root, first := write(1)
	if _, second := write(1); second != first {
		t.Error("two databases of the same closure differ")
	}
	if _, other := write(1700000000); other == first {
		t.Error("a different registration time gave the same database")
	}
	if err := (DBWriter{}).Write(ctx, root, infos, 1); err == nil {
		t.Error("a second Write into the same root succeeded")
	}

	// The real nix-store, from the same registration.
	var reg bytes.Buffer
	if err := WriteRegistration(&reg, infos); err != nil {
		t.Fatal(err)
	}
	theirs := t.TempDir()
	load := exec.Command("nix-store", "--store", theirs, "--load-db")
	load.Stdin = &reg
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("nix-store --load-db: %v: %s", err, out)
	}

	// The same state directory: files, modes, sizes, links.
	if got, want := listTree(t, root), listTree(t, theirs); got != strings.ReplaceAll(want, theirs, "") {
		t.Errorf("state directory:\n%s\nnix-store --load-db leaves:\n%s", got, want)
	}
	// nix-store dumps both the same, and reads the references back.
	dump := func(r string) string {
		out, err := exec.Command("nix-store", "--store", r, "--dump-db").Output()
		if err != nil {
			t.Fatalf("nix-store --dump-db of %s: %v", r, err)
		}
		return string(out)
	}
	if got, want := dump(root), dump(theirs); got != want {
		t.Errorf("nix-store --dump-db:\n%s\nof nix-store --load-db's:\n%s", got, want)
	}
	for _, info := range infos {
		out, err := exec.Command("nix-store", "--store", root, "-q", "--references", info.Path).Output()
		if err != nil {
			t.Fatalf("nix-store -q --references %s in the new database: %v", info.Path, err)
		}
		got := strings.Fields(string(out)) // in nix-store's topological order
		sort.Strings(got)
		if want := info.References; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s references %v, want %v", info.Path, got, want)
		}
	}
	// Every row as Nix's own, but for the registration time it stamps.
	rows := func(r string) string {
		out, err := exec.Command("sqlite3", filepath.Join(r, DBPath),
			"SELECT id, path, hash, deriver, narSize, quote(ultimate), quote(sigs), quote(ca) FROM ValidPaths ORDER BY id;"+
				"SELECT referrer, reference FROM Refs ORDER BY referrer, reference; SELECT * FROM sqlite_sequence; PRAGMA journal_mode;").Output()
		if err != nil {
			t.Fatalf("sqlite3 %s: %v", r, err)
		}
		return string(out)
	}
	if got, want := rows(root), rows(theirs); got != want {
		t.Errorf("rows:\n%s\nnix-store --load-db's:\n%s", got, want)
	}
	out, err := exec.Command("sqlite3", filepath.Join(root, DBPath), "SELECT DISTINCT registrationTime FROM ValidPaths; SELECT count(*) FROM ValidPaths;").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(out)), []string{"1", strconv.Itoa(len(infos))}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("registration times and path count %v, want %v", got, want)
	}
}

// A reference outside the closure is refused, as nix-store refuses it.
func TestDBWriterRefusesDangling(t *testing.T) {
	infos := []PathInfo{{
		Path:       "/nix/store/00000000000000000000000000000000-a",
		NarHash:    "sha256:" + strings.Repeat("0", 64),
		NarSize:    8,
		References: []string{"/nix/store/11111111111111111111111111111111-b"},
	}}
	root := t.TempDir()
	err := (DBWriter{}).Write(context.Background(), root, infos, 1)
	if err == nil || !strings.Contains(err.Error(), "not in the closure") {
		t.Fatalf("err = %v, want a reference not in the closure", err)
	}
	if _, err := os.Stat(filepath.Join(root, DBPath)); err == nil {
		t.Error("a database was left")
	}
}

// listTree lists root's files: path, mode, size (of regular files) and
// link target, sorted. The database's own size is left out.
func listTree(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := rel + " " + fi.Mode().String()
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode().IsRegular() && rel != DBPath:
			line += " " + strconv.FormatInt(fi.Size(), 10)
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
