package binarycache

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// FuzzNarInfo: ParseNarInfo on any body either refuses it or returns a PathInfo that
// names the path asked for, whose NAR URL stays inside the cache, whose signature (when
// required) verifies over a fingerprint recomputed from the returned fields, and whose
// registration round-trips through nixstore's writer and parser. Seeds: the narinfo files
// of a real `nix copy` cache of the small fixture closure (testdata/cache, key.pub).
func FuzzNarInfo(f *testing.F) {
	pubText, err := os.ReadFile("testdata/key.pub")
	if err != nil {
		f.Fatal(err)
	}
	pub, err := signature.ParsePublicKey(strings.TrimSpace(string(pubText)))
	if err != nil {
		f.Fatal(err)
	}
	seeds, _ := filepath.Glob("testdata/cache/*.narinfo")
	if len(seeds) == 0 {
		f.Fatal("no seed narinfo files")
	}
	for _, s := range seeds {
		b, _ := os.ReadFile(s)
		want := ""
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "StorePath: "); ok {
				want = v
			}
		}
		f.Add(b, want)
	}
	keys := []signature.PublicKey{pub}
	f.Fuzz(func(t *testing.T, body []byte, want string) {
		p, err := ParseNarInfo(body, want, keys, true)
		if err != nil {
			return
		}
		if p.Path != want || p.SignedBy != pub.Name {
			t.Fatalf("accepted %q signed by %q for %q", p.Path, p.SignedBy, want)
		}
		fp := "1;" + p.Path + ";" + p.NarHash.Format(nixhash.NixBase32, true) + ";" +
			strconv.FormatUint(p.NarSize, 10) + ";" + strings.Join(p.References, ",")
		ok := false
		for _, l := range strings.Split(string(body), "\n") {
			if v, found := strings.CutPrefix(l, "Sig: "); found {
				if s, err := signature.ParseSignature(v); err == nil && pub.Verify(fp, s) {
					ok = true
				}
			}
		}
		if !ok {
			t.Fatalf("no signature verifies over the returned fields' fingerprint %q", fp)
		}
		if _, err := (&substituter{dir: "/cache"}).resolve(p.URL); err != nil {
			t.Fatalf("accepted URL %q: %v", p.URL, err)
		}
		unsigned, err := ParseNarInfo(body, want, nil, false)
		if err != nil {
			t.Fatalf("accepted with signatures, refused without: %v", err)
		}
		unsigned.SignedBy = p.SignedBy
		if !reflect.DeepEqual(unsigned, p) {
			t.Fatal("the result depends on the keys")
		}
		var reg bytes.Buffer
		if err := WriteRegistration(&reg, []*PathInfo{p}); err != nil {
			t.Fatalf("registration: %v", err)
		}
		back, err := nixstore.ParseRegistration(&reg)
		if err != nil || len(back) != 1 || !reflect.DeepEqual(back[0], p.NixstoreInfo()) {
			t.Fatalf("registration does not round-trip: %v %+v", err, back)
		}
	})
}
