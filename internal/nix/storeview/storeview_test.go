package storeview

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"
)

const (
	sys     = "00000000000000000000000000000sys-system"
	linux   = "1111111111111111111111111111linux-linux"
	mods    = "22222222222222222222222222222mods-mods"
	modfile = "333333333333333333333333modfiles-linux-modules"
)

// testStore makes store paths on disk, with the links a system has and
// the hostile ones a NAR may carry, and returns their NARs by base name.
func testStore(t *testing.T) map[string][]byte {
	t.Helper()
	src := t.TempDir()
	mk := func(rel, data string, mode os.FileMode) {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(rel, target string) {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	mk(sys+"/boot.json", "{}", 0o644)
	ln(sys+"/kernel", "/nix/store/"+linux+"/bzImage")
	ln(sys+"/kernel-rel", "../"+linux+"/bzImage")
	ln(sys+"/kernel-modules", "/nix/store/"+mods)
	ln(sys+"/escape", "../../../etc/passwd")
	ln(sys+"/deep/escape", "../../../../../../../etc/passwd")
	ln(sys+"/abs-out", "/etc/passwd")
	ln(sys+"/store-root", "/nix/store")
	ln(sys+"/loop", "loop")
	ln(sys+"/missing", "/nix/store/44444444444444444444444444444444-gone/x")
	mk(linux+"/bzImage", "kernel bytes", 0o555)
	mk(mods+"/lib/modules/6.1/modules.dep", "kernel/fs/ext4.ko:\n", 0o444)
	ln(mods+"/lib/modules/6.1/kernel", "/nix/store/"+modfile+"/lib/modules/6.1/kernel")
	mk(modfile+"/lib/modules/6.1/kernel/fs/ext4.ko", "ext4 module", 0o444)
	nars := map[string][]byte{}
	for _, b := range []string{sys, linux, mods, modfile} {
		var buf bytes.Buffer
		if err := nar.DumpPath(&buf, filepath.Join(src, b)); err != nil {
			t.Fatal(err)
		}
		nars[b] = buf.Bytes()
	}
	return nars
}

func newView(t *testing.T, nars map[string][]byte, opened map[string]int) *View {
	return New(t.TempDir(), "/nix/store", func(base string) (io.ReadCloser, int64, bool, error) {
		b, ok := nars[base]
		if opened != nil {
			opened[base]++
		}
		return io.NopCloser(bytes.NewReader(b)), int64(len(b)), ok, nil
	})
}

func TestResolve(t *testing.T) {
	opened := map[string]int{}
	v := newView(t, testStore(t), opened)
	for _, rel := range []string{"kernel", "kernel-rel"} {
		p, err := v.Resolve("/nix/store/" + sys + "/" + rel)
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(v.Dir(), linux, "bzImage"); p != want {
			t.Errorf("%s resolves to %s, want %s", rel, p, want)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v, want an executable file", p, fi, err)
		}
		if b, _ := os.ReadFile(p); string(b) != "kernel bytes" {
			t.Errorf("%s holds %q", p, b)
		}
	}
	// Only what was passed through is unpacked, each NAR once.
	if _, err := os.Lstat(filepath.Join(v.Dir(), mods)); err == nil {
		t.Error("a store path nothing led to was unpacked")
	}
	if opened[sys] != 1 || opened[linux] != 1 {
		t.Errorf("NARs opened %v, want each once", opened)
	}
	if got, want := v.Unpacked(), int64(len("{}")+len("kernel bytes")); got != want {
		t.Errorf("Unpacked() = %d, want %d", got, want)
	}

	for rel, want := range map[string]string{
		"escape":      "links out of the store",
		"deep/escape": "links out of the store",
		"abs-out":     "links out of the store",
		"store-root":  "links out of the store",
		"loop":        "too many levels",
		"missing":     "not in the closure",
		"nothing":     "no such file",
		"boot.json/x": "not a directory",
	} {
		_, err := v.Resolve("/nix/store/" + sys + "/" + rel)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", rel, err, want)
		}
	}
	for _, p := range []string{"nix/store/" + sys, "/nix/store/../etc/passwd", "/etc/passwd", "/nix/store/" + sys + "/./kernel"} {
		if _, err := v.Resolve(p); err == nil {
			t.Errorf("%s resolved", p)
		}
	}
	// The host's own symlink resolution stays in the view too: the
	// rewritten links out of the store dangle there.
	for _, rel := range []string{"escape", "deep/escape", "abs-out"} {
		p := filepath.Join(v.Dir(), sys, rel)
		target, _ := os.Readlink(p)
		if !strings.HasPrefix(target, v.Dir()+"/") {
			t.Errorf("%s -> %s, outside the view", p, target)
		}
		if _, err := os.ReadFile(p); err == nil {
			t.Errorf("%s could be read", p)
		}
	}
}

// ResolveTree unpacks what the tree's links lead to, so the host reads
// module files through them; without it they dangle.
func TestResolveTree(t *testing.T) {
	nars := testStore(t)
	ko := "lib/modules/6.1/kernel/fs/ext4.ko"
	v := newView(t, nars, nil)
	p, err := v.Resolve("/nix/store/" + sys + "/kernel-modules")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(p, ko)); err == nil {
		t.Fatal("the module's store path was unpacked by Resolve")
	}
	v = newView(t, nars, nil)
	p, err = v.ResolveTree("/nix/store/" + sys + "/kernel-modules")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(v.Dir(), mods); p != want {
		t.Errorf("resolves to %s, want %s", p, want)
	}
	if b, err := os.ReadFile(filepath.Join(p, ko)); err != nil || string(b) != "ext4 module" {
		t.Errorf("%s: %q, %v", ko, b, err)
	}
	// The system's other links were not followed.
	if _, err := os.Lstat(filepath.Join(v.Dir(), linux)); err == nil {
		t.Error("ResolveTree of the modules unpacked the kernel")
	}
}

// A NAR that is not one, or is cut short, is an error naming the path,
// and the error stays: the path is not tried again half unpacked.
func TestBadNAR(t *testing.T) {
	nars := testStore(t)
	nars[linux] = nars[linux][:len(nars[linux])-8]
	v := newView(t, nars, nil)
	for range 2 {
		_, err := v.Resolve("/nix/store/" + sys + "/kernel")
		if err == nil || !strings.Contains(err.Error(), "unpacking /nix/store/"+linux) {
			t.Fatalf("err = %v, want an unpacking error", err)
		}
	}
}

// Whatever the target, a rewritten link stays inside the view.
func FuzzRewrite(f *testing.F) {
	for _, s := range []string{"/nix/store/x", "../../etc", "/", "..", ".outside/x", "/nix/store/.outside", "a/../../.."} {
		f.Add("sub/dir/link", s)
	}
	v := New("/view", "/nix/store", nil)
	f.Fuzz(func(t *testing.T, rel, target string) {
		if rel == "" || strings.HasPrefix(rel, "/") {
			return
		}
		got := v.rewrite("base", filepath.Clean(rel), target)
		if !strings.HasPrefix(got, "/view/") || filepath.Clean(got) != got {
			t.Fatalf("rewrite(%q, %q) = %q", rel, target, got)
		}
	})
}
