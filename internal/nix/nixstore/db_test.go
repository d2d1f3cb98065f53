package nixstore

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
)

// The database nix-store and sqlite3 leave is reproducible once the
// registration time is pinned, and registers exactly the closure.
func TestDBWriter(t *testing.T) {
	roots := fixtures.Build(t, "small")
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
	time.Sleep(1100 * time.Millisecond) // nix-store stamps the clock's second
	if _, second := write(1); second != first {
		t.Error("two databases of the same closure differ")
	}
	if _, other := write(1700000000); other == first {
		t.Error("a different registration time gave the same database")
	}

	// Links nix-store made into the temporary root point into the system's.
	if target, err := os.Readlink(filepath.Join(root, "nix/var/nix/gcroots/profiles")); err != nil || target != "/nix/var/nix/profiles" {
		t.Errorf("gcroots/profiles -> %q (%v), want /nix/var/nix/profiles", target, err)
	}
	out, err := exec.Command("sqlite3", filepath.Join(root, DBPath), "SELECT DISTINCT registrationTime FROM ValidPaths; SELECT count(*) FROM ValidPaths;").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(out)), []string{"1", strconv.Itoa(len(infos))}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("registration times and path count %v, want %v", got, want)
	}
	for _, info := range infos {
		out, err := exec.Command("nix-store", "--store", root, "-q", "--references", info.Path).Output()
		if err != nil {
			t.Fatalf("nix-store -q --references %s in the new database: %v", info.Path, err)
		}
		if got, want := strings.Fields(string(out)), info.References; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s references %v, want %v", info.Path, got, want)
		}
	}
}
