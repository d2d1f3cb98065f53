package binarycache

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
)

// The small fixture closure (6 paths: references, a self-less chain, two CA text paths).
const fixtureRoot = "/nix/var/nix/gcroots/packer-plugin-nixos/small"

type realCache struct {
	dir, pub string
	root     string
	paths    []string // the closure, sorted
}

var (
	cacheOnce sync.Map // compression -> *realCache
	cacheMu   sync.Mutex
	tmpRoot   string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if tmpRoot != "" {
		os.RemoveAll(tmpRoot)
	}
	os.Exit(code)
}

// makeCache builds a real binary cache with `nix copy --to file://…`, signed by a fresh key
// from `nix-store --generate-binary-cache-key`. It is made once per compression; tests
// that tamper with it copy it first (copyCache).
func makeCache(t *testing.T, compression string) *realCache {
	t.Helper()
	for _, tool := range []string{"nix", "nix-store"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	root, err := filepath.EvalSymlinks(fixtureRoot)
	if err != nil {
		t.Skipf("fixture closure not built (%v)", err)
	}
	cacheMu.Lock()
	defer cacheMu.Unlock()
	if c, ok := cacheOnce.Load(compression); ok {
		return c.(*realCache)
	}
	if tmpRoot == "" {
		if tmpRoot, err = os.MkdirTemp("", "binarycache-test-"); err != nil {
			t.Fatal(err)
		}
	}
	base := filepath.Join(tmpRoot, compression)
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	sec, pub := filepath.Join(base, "sec"), filepath.Join(base, "pub")
	cachetest.Output(t, "nix-store", "--generate-binary-cache-key", "test-1", sec, pub)
	dir := filepath.Join(base, "cache")
	cachetest.Output(t, "nix", "--extra-experimental-features", "nix-command", "copy", "--to",
		"file://"+dir+"?compression="+compression+"&secret-key="+sec, root)
	pubKey, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	paths := strings.Fields(cachetest.Output(t, "nix-store", "-qR", root))
	slices.Sort(paths)
	c := &realCache{dir: dir, pub: strings.TrimSpace(string(pubKey)), root: root, paths: paths}
	cacheOnce.Store(compression, c)
	return c
}

// copyCache copies a cache directory (flat files and nar/) for tampering.
func copyCache(t *testing.T, src string) string { return cachetest.Copy(t, src) }

// testConfig has short timeouts and back-off so failure tests are quick.
func testConfig(sub, pub string) Config {
	return Config{
		Substituters:      []string{sub},
		TrustedPublicKeys: []string{pub},
		StallTimeout:      300 * time.Millisecond,
		Backoff:           5 * time.Millisecond,
		Retries:           2,
	}
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// assertEmpty fails unless dir holds nothing: a refused download leaves no file.
func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("%s not empty after a refusal: %v", dir, ents)
	}
}

func narinfoPath(dir, storePath string) string {
	return filepath.Join(dir, strings.TrimPrefix(storePath, StoreDir+"/")[:32]+".narinfo")
}

// editNarInfo rewrites one narinfo line by line.
func editNarInfo(t *testing.T, dir, storePath string, edit func(line string) string) {
	cachetest.EditNarInfo(t, narinfoPath(dir, storePath), edit)
}

func wantErr(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func isMismatch(err error, what string) bool {
	var m *MismatchError
	return errors.As(err, &m) && m.What == what
}

var _ = context.Background

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o644) }

func itoa(n int) string { return strconv.Itoa(n) }

// sha256sum is "sha256:<nixbase32>", as narinfo files write FileHash.
func sha256sum(b []byte) string {
	s := sha256.Sum256(b)
	return nixhash.MustNewHash(nixhash.SHA256, s[:]).Format(nixhash.NixBase32, true)
}
