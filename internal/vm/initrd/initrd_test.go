package initrd

import (
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
)

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
		"kernel/b.ko.xz":  []byte("xz bytes"),
		"kernel/c-d.ko":   []byte("\x7fELF plain"),
		"modules.dep":     []byte("kernel/a.ko.gz: kernel/b.ko.xz\nkernel/b.ko.xz:\nkernel/c-d.ko:\n"),
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

func listCpio(t *testing.T, gz []byte) (names []string, tree string) {
	t.Helper()
	imagecheck.RequireTool(t, "cpio")
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	tree = t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = tree, zr
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	zr, _ = gzip.NewReader(bytes.NewReader(gz))
	cmd = exec.Command("cpio", "-t", "--quiet")
	cmd.Stdin = zr
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
	names, tree := listCpio(t, a.Bytes())
	want := "dev proc sys run tmp mnt lib lib/modules dev/console init lib/modules/b.ko.xz lib/modules/a.ko lib/modules/c_d.ko lib/modules/load-order"
	if strings.Join(names, " ") != want {
		t.Errorf("entries:\n%s\nwant\n%s", strings.Join(names, " "), want)
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(tree, p)); return string(b) }
	if read("lib/modules/load-order") != "b.ko.xz\na.ko\nc_d.ko\n" || read("lib/modules/a.ko") != "\x7fELF gz module" || read("init") != "#!agent" {
		t.Errorf("contents: order %q a %q", read("lib/modules/load-order"), read("lib/modules/a.ko"))
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
