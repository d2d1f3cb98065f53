package binarycache

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nartree"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
)

// TestRealCaches reads closures from caches made by the real `nix copy`, xz and zstd,
// served as file:// and over HTTP: the closure is `nix-store -qR`'s, the registration
// is byte-identical to `nix-store --dump-db` of the same (sorted) paths, and every NAR,
// spooled (read twice) or streamed, is byte-identical to `nix-store --dump`.
func TestRealCaches(t *testing.T) {
	for _, comp := range []string{"xz", "zstd", "bzip2", "none"} {
		rc := makeCache(t, comp)
		for _, scheme := range []string{"file", "http"} {
			t.Run(comp+"/"+scheme, func(t *testing.T) {
				sub := "file://" + rc.dir
				if scheme == "http" {
					sub = cachetest.Serve(t, rc.dir, nil)
				}
				c := newClient(t, Config{Substituters: []string{sub}, TrustedPublicKeys: []string{rc.pub}})
				ctx := context.Background()
				if err := c.CheckStoreDirs(ctx); err != nil {
					t.Fatal(err)
				}
				infos, err := c.Closure(ctx, []string{rc.root})
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, p := range infos {
					got = append(got, p.Path)
					if p.SignedBy != "test-1" || p.Compression != comp {
						t.Errorf("%s: signed by %q, compression %q", p.Path, p.SignedBy, p.Compression)
					}
				}
				if !slices.Equal(got, rc.paths) {
					t.Fatalf("closure %v, nix-store -qR %v", got, rc.paths)
				}
				var reg bytes.Buffer
				if err := WriteRegistration(&reg, infos); err != nil {
					t.Fatal(err)
				}
				want := cachetest.Output(t, "nix-store", append([]string{"--dump-db"}, rc.paths...)...)
				if reg.String() != want {
					t.Errorf("registration differs from nix-store --dump-db:\n%s\nwant:\n%s", reg.String(), want)
				}
				spool := t.TempDir()
				for _, p := range infos {
					nar := cachetest.Output(t, "nix-store", "--dump", p.Path)
					s, err := c.Spool(ctx, p, spool)
					if err != nil {
						t.Fatal(err)
					}
					readAllEqual(t, s.Open, nar, p.Path) // e.g. the sizing pass
					walkTree(t, s, len(nar))             // the writing pass, as entries
					readAllEqual(t, func() (io.ReadCloser, error) { return c.OpenNAR(ctx, p) }, nar, p.Path)
					if err := s.Remove(); err != nil {
						t.Fatal(err)
					}
				}
				assertEmpty(t, spool)
			})
		}
	}
}

func readAllEqual(t *testing.T, open func() (io.ReadCloser, error), want, path string) {
	t.Helper()
	r, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !bytes.Equal(got, []byte(want)) {
		t.Fatalf("%s: NAR differs from nix-store --dump (%d vs %d bytes)", path, len(got), len(want))
	}
}

// TestCheckStoreDirRefused: a cache for another store directory is refused up front.
func TestCheckStoreDirRefused(t *testing.T) {
	dir := t.TempDir()
	if err := writeFile(dir+"/nix-cache-info", "StoreDir: /gnu/store\nWantMassQuery: 1\n"); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"file://" + dir, cachetest.Serve(t, dir, nil)} {
		c := newClient(t, Config{Substituters: []string{sub}, AcceptUnsigned: true})
		wantErr(t, c.CheckStoreDirs(context.Background()), "nix-cache-info", `"/gnu/store"`)
	}
}

// walkTree reads a spooled NAR as the builder will, through nartree, to its verified end.
func walkTree(t *testing.T, s *Spooled, narLen int) {
	t.Helper()
	rc, err := s.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr, err := nartree.NewReaderSize(rc, int64(s.Info.NarSize))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for {
		_, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", s.Info.Path, err)
		}
		n++
	}
	if n == 0 || int(s.Info.NarSize) != narLen {
		t.Fatalf("%s: %d entries, NarSize %d, nix-store --dump %d bytes", s.Info.Path, n, s.Info.NarSize, narLen)
	}
}

// committedCache is the cache made once by `nix copy` of the small fixture closure
// (testdata/cache) as an absolute directory, and its public key (testdata/key.pub).
func committedCache(t *testing.T) (dir, pub string) {
	t.Helper()
	dir, err := filepath.Abs("testdata/cache")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("testdata/key.pub")
	if err != nil {
		t.Fatal(err)
	}
	return dir, strings.TrimSpace(string(b))
}

// TestCommittedCache needs no Nix: a cache made once by `nix copy` (testdata/cache, the
// small fixture closure, key testdata/key.pub) read as file:// and over HTTP, every NAR
// walked to its verified end.
func TestCommittedCache(t *testing.T) {
	dir, pub := committedCache(t)
	const root = "/nix/store/ph3wwanxydp5pg3ja6ids1q381g8kbcd-fixture-small-a"
	for _, sub := range []string{"file://" + dir, cachetest.Serve(t, dir, nil)} {
		c := newClient(t, Config{Substituters: []string{sub}, TrustedPublicKeys: []string{pub}})
		infos, err := c.Closure(context.Background(), []string{root})
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) != 6 || !slices.ContainsFunc(infos, func(p *PathInfo) bool { return p.Path == root }) {
			t.Fatalf("closure of %d paths", len(infos))
		}
		for _, p := range infos {
			s, err := c.Spool(context.Background(), p, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			walkTree(t, s, int(p.NarSize))
		}
	}
}
