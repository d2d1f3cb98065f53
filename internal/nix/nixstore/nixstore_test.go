package nixstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
)

func nixStore(t *testing.T, stdin io.Reader, args ...string) string {
	t.Helper()
	cmd := exec.Command("nix-store", args...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nix-store %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

func closureOf(t *testing.T, name string) ([]string, []PathInfo) {
	t.Helper()
	roots := fixtures.Build(t, name)
	s := &Store{}
	infos, err := s.Closure(context.Background(), roots)
	if err != nil {
		t.Fatal(err)
	}
	return roots, infos
}

func paths(infos []PathInfo) []string {
	var out []string
	for _, in := range infos {
		out = append(out, in.Path)
	}
	return out
}

func TestClosureMatchesNixStore(t *testing.T) {
	for _, name := range []string{"small", "many"} {
		t.Run(name, func(t *testing.T) {
			roots, infos := closureOf(t, name)
			want := sortedUnique(strings.Fields(nixStore(t, nil, append([]string{"-qR"}, roots...)...)))
			if got := paths(infos); !reflect.DeepEqual(got, want) {
				t.Fatalf("closure paths differ from nix-store -qR:\n got %v\nwant %v", got, want)
			}
			// One query per field per path is slow; a sample of a big closure is enough.
			sample := infos
			if len(sample) > 12 {
				sample = append(append([]PathInfo(nil), infos[:6]...), infos[len(infos)-6:]...)
			}
			for _, in := range sample {
				refs := sortedUnique(strings.Fields(nixStore(t, nil, "-q", "--references", in.Path)))
				if len(refs) == 0 {
					refs = nil
				}
				if !reflect.DeepEqual(in.References, refs) {
					t.Errorf("%s: references %v, nix-store says %v", in.Path, in.References, refs)
				}
				// nix-store -q --hash prints sha256:<base32>, exercising the base-32 decoder.
				h, err := ParseNarHash(strings.TrimSpace(nixStore(t, nil, "-q", "--hash", in.Path)))
				if err != nil || h != in.NarHash {
					t.Errorf("%s: hash %s, nix-store says %s (%v)", in.Path, in.NarHash, h, err)
				}
				if size := strings.TrimSpace(nixStore(t, nil, "-q", "--size", in.Path)); size != fmt.Sprint(in.NarSize) {
					t.Errorf("%s: NAR size %d, nix-store says %s", in.Path, in.NarSize, size)
				}
				if d := strings.TrimSpace(nixStore(t, nil, "-q", "--deriver", in.Path)); d == "unknown-deriver" && in.Deriver != "" ||
					d != "unknown-deriver" && d != in.Deriver {
					t.Errorf("%s: deriver %q, nix-store says %q", in.Path, in.Deriver, d)
				}
			}
		})
	}
}

func TestClosureShapeSmall(t *testing.T) {
	_, infos := closureOf(t, "small")
	by := map[string]PathInfo{}
	for _, in := range infos {
		by[in.Path[len(DefaultStoreDir)+34:]] = in
	}
	has := func(from, to string) bool {
		for _, r := range by[from].References {
			if strings.HasSuffix(r, "-"+to) {
				return true
			}
		}
		return false
	}
	if !has("fixture-small-a", "fixture-small-b") || !has("fixture-small-a", "fixture-small-c") ||
		!has("fixture-small-c", "fixture-small-d") {
		t.Errorf("unexpected reference graph: %+v", by)
	}
	if by["fixture-small-note"].Deriver != "" || by["fixture-small-a"].Deriver == "" {
		t.Errorf("derivers: note %q, a %q", by["fixture-small-note"].Deriver, by["fixture-small-a"].Deriver)
	}
}

// Our registration is byte for byte what nix-store --dump-db prints, and parses back.
func TestRegistrationEqualsDumpDB(t *testing.T) {
	_, infos := closureOf(t, "many")
	dump := nixStore(t, nil, append([]string{"--dump-db"}, paths(infos)...)...)
	var buf bytes.Buffer
	if err := WriteRegistration(&buf, infos); err != nil {
		t.Fatal(err)
	}
	if buf.String() != dump {
		t.Fatalf("registration differs from nix-store --dump-db (%d vs %d bytes)", buf.Len(), len(dump))
	}
	back, err := ParseRegistration(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, infos) {
		t.Fatal("ParseRegistration(WriteRegistration(x)) != x")
	}
}

// The oracle: a fresh store holding copies of the closure, loaded with our registration,
// verifies with --check-contents and answers reference queries like the host store.
func TestRegistrationLoadsAndVerifies(t *testing.T) {
	for _, name := range []string{"small", "many"} {
		t.Run(name, func(t *testing.T) { loadAndVerify(t, name) })
	}
}

func loadAndVerify(t *testing.T, name string) {
	roots, infos := closureOf(t, name)
	root := t.TempDir()
	t.Cleanup(func() { exec.Command("chmod", "-R", "u+w", root).Run() })
	store := filepath.Join(root, "nix", "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", append(append([]string{"-a"}, paths(infos)...), store)...).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	var reg bytes.Buffer
	if err := WriteRegistration(&reg, infos); err != nil {
		t.Fatal(err)
	}
	// Nix 2.8 takes a chroot store as a bare directory (same as "local?root=DIR").
	nixStore(t, bytes.NewReader(reg.Bytes()), "--store", root, "--load-db")
	nixStore(t, nil, "--store", root, "--verify", "--check-contents")

	// The loaded database holds exactly what we wrote...
	if dump := nixStore(t, nil, append([]string{"--store", root, "--dump-db"}, paths(infos)...)...); dump != reg.String() {
		t.Errorf("the loaded store dumps a different registration")
	}
	// ...and answers queries like the host's (a sample: one process per query is slow).
	sample := infos
	if len(sample) > 12 {
		sample = append(append([]PathInfo(nil), infos[:6]...), infos[len(infos)-6:]...)
	}
	for _, in := range sample {
		refs := sortedUnique(strings.Fields(nixStore(t, nil, "--store", root, "-q", "--references", in.Path)))
		if len(refs) == 0 {
			refs = nil
		}
		if !reflect.DeepEqual(refs, in.References) {
			t.Errorf("%s: loaded store has references %v, want %v", in.Path, refs, in.References)
		}
	}
	got := sortedUnique(strings.Fields(nixStore(t, nil, "--store", root, "-qR", roots[0])))
	if !reflect.DeepEqual(got, paths(infos)) {
		t.Errorf("loaded store's closure %v, want %v", got, paths(infos))
	}

	// The registration has no times; --load-db stamps them itself.
	if _, err := exec.LookPath("sqlite3"); err == nil {
		out, err := exec.Command("sqlite3", filepath.Join(root, "nix/var/nix/db/db.sqlite"),
			"select count(*) from ValidPaths where registrationTime > 0").Output()
		if err != nil || strings.TrimSpace(string(out)) != fmt.Sprint(len(infos)) {
			t.Errorf("registrationTime set on %s of %d paths (%v)", out, len(infos), err)
		}
	}

	if name != "small" {
		return
	}
	// And the oracle can fail: a modified file must not verify.
	victim := filepath.Join(root, roots[0], "nested/one/two/c-path")
	os.Chmod(filepath.Dir(victim), 0o755)
	os.Chmod(victim, 0o644)
	if err := os.WriteFile(victim, []byte("tampered\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nix-store", "--store", root, "--verify", "--check-contents")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), roots[0]) {
		t.Errorf("verify of a tampered store: err %v, output %s", err, out)
	}
}

func TestCheckErrorsNameThePath(t *testing.T) {
	roots := fixtures.Build(t, "small")
	s := &Store{}
	if err := s.Check(roots[0]); err != nil {
		t.Fatalf("Check(%s): %v", roots[0], err)
	}

	// An unregistered directory in the real store: what an interrupted build leaves.
	unreg := filepath.Join(DefaultStoreDir, "0000000000000000000000000000000a-packer-nixos-unregistered")
	if err := os.Mkdir(unreg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(unreg) })

	for _, c := range []struct{ path, want string }{
		{"relative/path", "not an absolute path"},
		{"/etc/passwd", "not inside the store"},
		{DefaultStoreDir, "not inside the store"},
		{roots[0] + "/bin/a", "file inside one; use " + roots[0]},
		{roots[0] + "/", "canonical"},
		{DefaultStoreDir + "/00000000000000000000000000000000-packer-nixos-missing", "does not exist"},
		{unreg, "not registered as valid"},
	} {
		err := s.Check(c.path)
		if err == nil || !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%q) = %v; want an error naming the path and saying %q", c.path, err, c.want)
		}
		if _, err := s.Closure(context.Background(), []string{c.path}); err == nil || !strings.Contains(err.Error(), c.path) {
			t.Errorf("Closure(%q) = %v; want an error naming the path", c.path, err)
		}
	}
}

// fakeDriver serves a registration from memory.
type fakeDriver struct {
	infos map[string]PathInfo
	extra string // appended to every dump
}

func (f *fakeDriver) Valid(_ context.Context, p string) (bool, error) {
	_, ok := f.infos[p]
	return ok, nil
}
func (f *fakeDriver) Requisites(_ context.Context, roots []string) ([]string, error) {
	seen := map[string]bool{}
	var visit func(string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, r := range f.infos[p].References {
			visit(r)
		}
	}
	for _, r := range roots {
		visit(r)
	}
	var out []string
	for p := range seen {
		out = append(out, p, p) // duplicates must be tolerated
	}
	return out, nil
}
func (f *fakeDriver) DumpDB(_ context.Context, ps []string, w io.Writer) error {
	var infos []PathInfo
	for _, p := range ps {
		infos = append(infos, f.infos[p])
	}
	if err := WriteRegistration(w, infos); err != nil {
		return err
	}
	_, err := io.WriteString(w, f.extra)
	return err
}

func hashOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func fakeStore(t *testing.T, n int) (*Store, map[string]PathInfo) {
	dir := t.TempDir()
	infos := map[string]PathInfo{}
	var prev []string
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, fmt.Sprintf("%032d-p%d", i, i))
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		refs := append([]string{p}, prev...) // self-reference plus everything before
		if len(refs) > 3 {
			refs = refs[:3]
		}
		infos[p] = PathInfo{Path: p, NarHash: hashOf(p), NarSize: int64(100 + i), Deriver: "/d/" + fmt.Sprint(i) + ".drv",
			References: sortedUnique(append([]string(nil), refs...))}
		prev = append([]string{p}, prev...)
	}
	return &Store{Dir: dir, Driver: &fakeDriver{infos: infos}}, infos
}

func TestClosureBatchesAndSorts(t *testing.T) {
	s, infos := fakeStore(t, 1300) // more than two --dump-db batches
	var last string
	for p := range infos {
		if p > last {
			last = p
		}
	}
	got, err := s.Closure(context.Background(), []string{last, last})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(infos) {
		t.Fatalf("closure has %d paths, want %d", len(got), len(infos))
	}
	for i, in := range got {
		if i > 0 && got[i-1].Path >= in.Path {
			t.Fatalf("not sorted/unique at %d: %s, %s", i, got[i-1].Path, in.Path)
		}
		if !reflect.DeepEqual(in, infos[in.Path]) {
			t.Fatalf("%s: got %+v, want %+v", in.Path, in, infos[in.Path])
		}
	}
}

func TestClosureRejectsUnexpectedDump(t *testing.T) {
	s, infos := fakeStore(t, 3)
	var any string
	for p := range infos {
		any = p
	}
	s.Driver.(*fakeDriver).extra = "/elsewhere/x\n" + strings.TrimPrefix(hashOf("x"), "sha256:") + "\n1\n\n0\n"
	if _, err := s.Closure(context.Background(), []string{any}); err == nil {
		t.Fatal("a dump describing extra paths was accepted")
	}
	if _, err := s.Closure(context.Background(), nil); err == nil {
		t.Fatal("no roots accepted")
	}
}

func TestWriteRegistrationDeterministic(t *testing.T) {
	_, m := fakeStore(t, 50)
	var infos []PathInfo
	for _, in := range m {
		infos = append(infos, in)
	}
	var first bytes.Buffer
	if err := WriteRegistration(&first, infos); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 5; i++ {
		r.Shuffle(len(infos), func(a, b int) { infos[a], infos[b] = infos[b], infos[a] })
		for k := range infos {
			refs := append([]string(nil), infos[k].References...)
			r.Shuffle(len(refs), func(a, b int) { refs[a], refs[b] = refs[b], refs[a] })
			infos[k].References = refs
		}
		var again bytes.Buffer
		if err := WriteRegistration(&again, infos); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first.Bytes(), again.Bytes()) {
			t.Fatal("registration depends on input order")
		}
	}
}

func TestWriteRegistrationErrors(t *testing.T) {
	good := PathInfo{Path: "/nix/store/x-a", NarHash: hashOf("a"), NarSize: 1}
	for name, c := range map[string][]PathInfo{
		"duplicate":     {good, good},
		"bad hash":      {{Path: "/nix/store/x-a", NarHash: "md5:abc", NarSize: 1}},
		"empty path":    {{NarHash: hashOf("a")}},
		"relative ref":  {{Path: "/nix/store/x-a", NarHash: hashOf("a"), References: []string{"x-b"}}},
		"newline":       {{Path: "/nix/store/x-a\n", NarHash: hashOf("a")}},
		"negative size": {{Path: "/nix/store/x-a", NarHash: hashOf("a"), NarSize: -1}},
	} {
		if err := WriteRegistration(io.Discard, c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseRegistration(t *testing.T) {
	h := hashOf("a")
	sum, _ := hex.DecodeString(strings.TrimPrefix(h, "sha256:"))
	// closureInfo writes "sha256:<base32>", an empty deriver, and no trailing blank line.
	closureInfo := "/nix/store/x-a\nsha256:" + encodeBase32(sum) + "\n5\n\n2\n/nix/store/x-b\n/nix/store/x-a\n" +
		"/nix/store/x-b\n" + h + "\n7\n/nix/store/y.drv\n0\n\n"
	got, err := ParseRegistration(strings.NewReader(closureInfo))
	if err != nil {
		t.Fatal(err)
	}
	want := []PathInfo{
		{Path: "/nix/store/x-a", NarHash: h, NarSize: 5, References: []string{"/nix/store/x-a", "/nix/store/x-b"}},
		{Path: "/nix/store/x-b", NarHash: h, NarSize: 7, Deriver: "/nix/store/y.drv"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	for name, bad := range map[string]string{
		"truncated":    "/nix/store/x-a\n" + h + "\n5\n\n2\n/nix/store/x-b\n",
		"bad size":     "/nix/store/x-a\n" + h + "\nfive\n\n0\n",
		"bad count":    "/nix/store/x-a\n" + h + "\n5\n\n-1\n",
		"bad hash":     "/nix/store/x-a\nnothex\n5\n\n0\n",
		"relative":     "x-a\n" + h + "\n5\n\n0\n",
		"blank inside": "/nix/store/x-a\n" + h + "\n5\n\n0\n\n/nix/store/x-b\n" + h + "\n5\n\n0\n",
	} {
		if _, err := ParseRegistration(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseNarHash(t *testing.T) {
	sum := sha256.Sum256([]byte("nar"))
	want := "sha256:" + hex.EncodeToString(sum[:])
	for _, in := range []string{
		hex.EncodeToString(sum[:]),
		want,
		"sha256:" + encodeBase32(sum[:]),
		encodeBase32(sum[:]),
		"sha256-" + base64.StdEncoding.EncodeToString(sum[:]),
	} {
		if got, err := ParseNarHash(in); err != nil || got != want {
			t.Errorf("ParseNarHash(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "md5:00", "sha256:zz", strings.Repeat("e", 52), "sha256:" + strings.Repeat("0", 63)} {
		if _, err := ParseNarHash(in); err == nil {
			t.Errorf("ParseNarHash(%q) accepted", in)
		}
	}
	// A base-32 string whose top bits overflow 256 bits is invalid, as in Nix.
	if _, err := ParseNarHash(strings.Repeat("z", 52)); err == nil {
		t.Error("overflowing base-32 accepted")
	}
}
