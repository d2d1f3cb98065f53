package kmod

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

func hostDB(t *testing.T) *DB {
	t.Helper()
	_, dir, err := HostKernel()
	if err != nil {
		t.Skip(err)
	}
	db, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestOrderHost(t *testing.T) {
	db := hostDB(t)
	mods, err := db.Order([]string{"virtio_pci", "virtio_blk", "ext4", "vfat", "nls-iso8859-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load order: %v", mods)
	pos := func(n string) int { return slices.Index(mods, n) }
	for _, n := range mods {
		for _, d := range db.Deps(n) {
			if pos(d) < 0 || pos(d) > pos(n) {
				t.Errorf("%s loads before its dependency %s", n, d)
			}
		}
	}
	// ext4 asks for crc32c only as a soft dependency; TCG needs the generic one.
	if db.Path("crc32c_generic") != "" && (pos("crc32c_generic") < 0 || pos("crc32c_generic") > pos("ext4")) {
		t.Errorf("crc32c_generic missing or after ext4: %v", mods)
	}
	if pos("nls_iso8859_1") < 0 && !db.Builtin("nls_iso8859_1") {
		t.Errorf("dashed name not resolved: %v", mods)
	}
}

// TestSynthetic covers soft dependencies through aliases, built-ins,
// cycles and unknown modules without depending on the host kernel.
func TestSynthetic(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"modules.dep": "kernel/fs/a.ko.xz: kernel/lib/b.ko.xz\nkernel/lib/b.ko.xz:\n" +
			"kernel/crypto/c_generic.ko.zst:\nkernel/crypto/c_intel.ko:\nkernel/x.ko: kernel/y.ko\nkernel/y.ko: kernel/x.ko\n",
		"modules.softdep": "# comment\nsoftdep a pre: crypto-c post: b\n",
		"modules.alias":   "alias crypto-c c_intel\nalias crypto-c c_generic\n",
		"modules.builtin": "kernel/fs/d.ko\n",
	}
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	db, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := db.Order([]string{"a", "d"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"c_generic", "b", "a"}; !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if db.Path("a") != filepath.Join(dir, "kernel/fs/a.ko.xz") || !db.Known("d") || db.Known("zz") {
		t.Errorf("Path/Known wrong: %q", db.Path("a"))
	}
	if _, err := db.Order([]string{"x"}); err == nil {
		t.Error("cycle accepted")
	}
	if _, err := db.Order([]string{"zz"}); err == nil {
		t.Error("unknown module accepted")
	}
	if _, err := Load(t.TempDir()); err == nil {
		t.Error("missing modules.dep accepted")
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range [][2]string{{"6.1.0-9-amd64", "6.1.0-56-amd64"}, {"6.9.1", "6.10.0"}, {"6.1", "6.1.0"}} {
		if !VersionLess(c[0], c[1]) || VersionLess(c[1], c[0]) {
			t.Errorf("want %s < %s", c[0], c[1])
		}
	}
}

func TestName(t *testing.T) {
	for in, want := range map[string]string{"kernel/fs/nls/nls_iso8859-1.ko.xz": "nls_iso8859_1", "ext4": "ext4", "a-b.ko": "a_b"} {
		if got := Name(in); got != want {
			t.Errorf("Name(%q) = %q, want %q", in, got, want)
		}
	}
}

// compressed writes data to dir/name through the real tool (nil: as is).
func compressed(t *testing.T, dir, name string, args []string, data []byte) {
	t.Helper()
	if args != nil {
		imagecheck.RequireTool(t, args[0])
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", args[0], err)
		}
		data = out
	}
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ReadELF decompresses every compression kmod knows in process, with no
// xz or zstd on PATH.
func TestReadELF(t *testing.T) {
	dir := t.TempDir()
	elf := bytes.Repeat([]byte("\x7fELF module bytes "), 10000)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elf)
	zw.Close()
	compressed(t, dir, "p.ko", nil, elf)
	compressed(t, dir, "g.ko.gz", nil, gz.Bytes())
	compressed(t, dir, "x.ko.xz", []string{"xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"}, elf)
	compressed(t, dir, "x64.ko.xz", []string{"xz", "-c"}, elf) // crc64, 8 MiB dictionary: what plain xz makes of out-of-tree modules
	compressed(t, dir, "z.ko.zst", []string{"zstd", "-q", "-19", "-c"}, elf)
	compressed(t, dir, "modules.dep", nil, []byte("p.ko:\ng.ko.gz:\nx.ko.xz:\nx64.ko.xz:\nz.ko.zst:\nb.ko.bz2:\n"))
	db, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir())
	for _, m := range []string{"p", "g", "x", "x64", "z"} {
		got, err := db.ReadELF(m)
		if err != nil || !bytes.Equal(got, elf) {
			t.Errorf("ReadELF(%s): %d bytes, %v; want the %d bytes compressed", m, len(got), err, len(elf))
		}
	}
	if _, err := db.ReadELF("b"); err == nil || !strings.Contains(err.Error(), "module b (") {
		t.Errorf("ReadELF of a .ko.bz2: %v", err)
	}
	if _, err := db.ReadELF("nothing"); err == nil {
		t.Error("ReadELF of an unknown module succeeded")
	}
}

// A module that decompresses past MaxModuleSize is refused, with the
// limit in the error, without holding it in memory.
func TestOpenBoundsTheDecompressedSize(t *testing.T) {
	imagecheck.RequireTool(t, "zstd")
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "bomb.ko.zst"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("zstd", "-q", "-c")
	cmd.Stdin, cmd.Stdout = io.LimitReader(zeros{}, MaxModuleSize+1), f
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	compressed(t, dir, "modules.dep", nil, []byte("bomb.ko.zst:\n"))
	db, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := db.Open("bomb")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n, err := io.Copy(io.Discard, r)
	if err == nil || n != MaxModuleSize || !strings.Contains(err.Error(), "module bomb (") || !strings.Contains(err.Error(), "more than 128 MiB") {
		t.Errorf("reading a module of MaxModuleSize+1 bytes: %d bytes, %v", n, err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
