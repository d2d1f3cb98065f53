package initrd

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
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
)

// compress runs the real tool as the kernel's build compresses modules
// (scripts/Makefile.modinst: xz --check=crc32 --lzma2=dict=1MiB; zstd).
func compress(t *testing.T, tool string, data []byte) []byte {
	t.Helper()
	imagecheck.RequireTool(t, tool)
	args := map[string][]string{"xz": {"--check=crc32", "--lzma2=dict=1MiB", "-c"}, "zstd": {"-q", "-c"}}[tool]
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	return out
}

// fakeModules makes a modules directory with one module of each
// compression and a dependency between them.
func fakeModules(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("\x7fELF gz module"))
	zw.Close()
	files := map[string][]byte{
		"kernel/a.ko.gz":  gz.Bytes(),
		"kernel/b.ko.xz":  compress(t, "xz", []byte("\x7fELF xz module")),
		"kernel/c-d.ko":   []byte("\x7fELF plain"),
		"kernel/e.ko.zst": compress(t, "zstd", []byte("\x7fELF zstd module")),
		"modules.dep":     []byte("kernel/a.ko.gz: kernel/b.ko.xz\nkernel/b.ko.xz: kernel/e.ko.zst\nkernel/c-d.ko:\nkernel/e.ko.zst:\n"),
		"modules.builtin": []byte("kernel/virtio_pci.ko\n"),
	}
	for n, b := range files {
		p := filepath.Join(dir, n)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func listCpio(t *testing.T, archive []byte) (names []string, tree string) {
	t.Helper()
	imagecheck.RequireTool(t, "cpio")
	tree = t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = tree, bytes.NewReader(archive)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	cmd = exec.Command("cpio", "-t", "--quiet")
	cmd.Stdin = bytes.NewReader(archive)
	b, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b)), tree
}

func TestBuild(t *testing.T) {
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte("#!agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	mods := fakeModules(t)
	var a, b bytes.Buffer
	o := Options{Agent: agent, ModulesDir: mods, Modules: []string{"a", "c_d", "virtio_pci"}}
	if err := Build(&a, o); err != nil {
		t.Fatal(err)
	}
	if err := Build(&b, o); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two builds differ")
	}
	// Gzip (for OVMF) is the same archive compressed.
	var z bytes.Buffer
	og := o
	og.Gzip = true
	if err := Build(&z, og); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&z)
	if err != nil {
		t.Fatal(err)
	}
	if un, err := io.ReadAll(zr); err != nil || !bytes.Equal(un, a.Bytes()) {
		t.Errorf("the gzip archive does not decompress to the plain one (%v)", err)
	}
	names, tree := listCpio(t, a.Bytes())
	// Every module ships decompressed under a .ko name.
	want := "dev proc sys run tmp mnt lib lib/modules dev/console init lib/modules/e.ko lib/modules/b.ko lib/modules/a.ko lib/modules/c_d.ko lib/modules/load-order"
	if strings.Join(names, " ") != want {
		t.Errorf("entries:\n%s\nwant\n%s", strings.Join(names, " "), want)
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(tree, p)); return string(b) }
	if read("lib/modules/load-order") != "e.ko\nb.ko\na.ko\nc_d.ko\n" || read("init") != "#!agent" {
		t.Errorf("contents: order %q init %q", read("lib/modules/load-order"), read("init"))
	}
	for m, want := range map[string]string{"a": "\x7fELF gz module", "b": "\x7fELF xz module", "c_d": "\x7fELF plain", "e": "\x7fELF zstd module"} {
		if got := read("lib/modules/" + m + ".ko"); got != want {
			t.Errorf("lib/modules/%s.ko holds %q; want %q", m, got, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(tree, "init")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("init: %v %v", fi, err)
	}

	// Explicit unknown modules fail; defaults the kernel lacks are skipped.
	if err := Build(&a, Options{Agent: agent, ModulesDir: mods, Modules: []string{"ext4"}}); err == nil || !strings.Contains(err.Error(), "ext4") {
		t.Errorf("unknown module: %v", err)
	}
	a.Reset()
	if err := Build(&a, Options{Agent: agent, ModulesDir: mods}); err != nil {
		t.Errorf("defaults on a kernel lacking them: %v", err)
	}
	if err := Build(&a, Options{Agent: filepath.Dir(agent)}); err == nil {
		t.Error("a directory as agent accepted")
	}
}

// TestBuildHost: the default set resolves on the host's kernel.
func TestBuildHost(t *testing.T) {
	_, dir, err := kmod.HostKernel()
	if err != nil {
		t.Skip(err)
	}
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("x"), 0o755)
	var buf bytes.Buffer
	if err := Build(&buf, Options{Agent: agent, ModulesDir: dir}); err != nil {
		t.Fatal(err)
	}
	_, tree := listCpio(t, buf.Bytes())
	order, _ := os.ReadFile(filepath.Join(tree, "lib/modules/load-order"))
	t.Logf("load order: %s", strings.Fields(string(order)))
	for _, m := range []string{"virtio_blk", "virtio_console", "ext4", "vfat", "nls_ascii"} {
		db, _ := kmod.Load(dir)
		if db.Path(m) != "" && !strings.Contains(string(order), m+".ko") {
			t.Errorf("%s missing from %s", m, order)
		}
	}
}

// hostModulesCompressed copies real modules of the host's kernel into a
// modules tree, compressed with the real tools as NixOS (xz) or a zstd
// kernel does, and indexes it with the real depmod, as NixOS's
// kernel-modules aggregator does. It returns the modules directory and
// each module's original bytes by name.
func hostModulesCompressed(t *testing.T, tools map[string]string) (string, map[string][]byte) {
	t.Helper()
	imagecheck.RequireTool(t, "depmod")
	_, hostDir, err := kmod.HostKernel()
	if err != nil {
		t.Skip(err)
	}
	host, err := kmod.Load(hostDir)
	if err != nil {
		t.Fatal(err)
	}
	ver := filepath.Base(hostDir)
	base := t.TempDir()
	dir := filepath.Join(base, "lib/modules", ver)
	orig := map[string][]byte{}
	for m, tool := range tools {
		p := host.Path(m)
		if p == "" || !strings.HasSuffix(p, ".ko") {
			t.Skipf("the host's %s is not a plain .ko (%q)", m, p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		orig[m] = b
		ext := map[string]string{"xz": ".xz", "zstd": ".zst"}[tool]
		dst := filepath.Join(dir, strings.TrimPrefix(p, hostDir+"/")+ext)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, compress(t, tool, b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("depmod", "-b", base, ver).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	return dir, orig
}

// The system's compressed modules reach the initrd decompressed, byte for
// byte the module that was compressed, under a .ko name; and the
// defaults take the etc overlay's loop, erofs and overlay when the kernel
// has them, with their dependencies.
func TestBuildDecompressesRealModules(t *testing.T) {
	dir, orig := hostModulesCompressed(t, map[string]string{"erofs": "xz", "libcrc32c": "zstd", "loop": "xz", "overlay": "zstd"})
	dep, _ := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if !strings.Contains(string(dep), "erofs.ko.xz: kernel/lib/libcrc32c.ko.zst") {
		t.Fatalf("depmod wrote\n%s", dep)
	}
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("x"), 0o755)
	var buf bytes.Buffer
	if err := Build(&buf, Options{Agent: agent, ModulesDir: dir}); err != nil {
		t.Fatal(err)
	}
	names, tree := listCpio(t, buf.Bytes())
	order, _ := os.ReadFile(filepath.Join(tree, "lib/modules/load-order"))
	if got, want := strings.Fields(string(order)), []string{"loop.ko", "libcrc32c.ko", "erofs.ko", "overlay.ko"}; !slices.Equal(got, want) {
		t.Errorf("load order %q; want %q", got, want)
	}
	for m, b := range orig {
		got, err := os.ReadFile(filepath.Join(tree, "lib/modules", m+".ko"))
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("lib/modules/%s.ko: %d bytes (%v); want the original %d bytes", m, len(got), err, len(b))
		}
	}
	for _, n := range names {
		if strings.HasSuffix(n, ".xz") || strings.HasSuffix(n, ".zst") {
			t.Errorf("the initrd ships %s compressed", n)
		}
	}
}

// A damaged compressed module stops the build with an error naming it.
func TestBuildRefusesACorruptModule(t *testing.T) {
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("x"), 0o755)
	for _, c := range []struct {
		name, want string
		damage     func([]byte) []byte
	}{
		{"flipped", "kmod: module loop (", func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b }},
		{"truncated", "truncated", func(b []byte) []byte { return b[:len(b)/2] }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, _ := hostModulesCompressed(t, map[string]string{"loop": "xz"})
			p := filepath.Join(dir, "kernel/drivers/block/loop.ko.xz")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, c.damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			err = Build(io.Discard, Options{Agent: agent, ModulesDir: dir})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "loop.ko.xz") {
				t.Errorf("Build with a %s loop.ko.xz: %v; want an error naming the module and its file", c.name, err)
			}
			t.Logf("%v", err)
		})
	}
}

// What decompresses cleanly but is no module is refused too.
func TestBuildRefusesANonELFModule(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/x.ko.zst:\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "kernel"), 0o755)
	os.WriteFile(filepath.Join(dir, "kernel/x.ko.zst"), compress(t, "zstd", []byte("<html>not found</html>")), 0o644)
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("x"), 0o755)
	err := Build(io.Discard, Options{Agent: agent, ModulesDir: dir, Modules: []string{"x"}})
	if err == nil || !strings.Contains(err.Error(), "module x (") || !strings.Contains(err.Error(), "not an ELF object") {
		t.Errorf("Build: %v; want module x refused as not an ELF object", err)
	}
}
