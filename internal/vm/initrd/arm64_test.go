package initrd

import (
	"bytes"
	"debug/elf"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Each architecture's list names its virtio transports before the
// devices, and crc32c before ext4.
func TestNeedsModules(t *testing.T) {
	for _, c := range []struct {
		goarch string
		want   []string
	}{
		{"", []string{"virtio_pci", "virtio_blk", "virtio_console", "crc32c_generic", "ext4"}},
		{"amd64", []string{"virtio_pci", "virtio_blk", "virtio_console", "crc32c_generic", "ext4"}},
		{"arm64", []string{"pci_host_generic", "virtio_mmio", "virtio_pci", "virtio_blk", "virtio_console", "crc32c_generic", "ext4"}},
	} {
		if got := (Needs{GOARCH: c.goarch}).Modules(); !slices.Equal(got, c.want) {
			t.Errorf("GOARCH %q: %q; want %q", c.goarch, got, c.want)
		}
	}
	all := Needs{GOARCH: "arm64", FAT: true, EFIVars: true, EtcOverlay: true}.Modules()
	if want := []string{"pci_host_generic", "virtio_mmio", "virtio_pci", "virtio_blk", "virtio_console", "crc32c_generic", "ext4",
		"vfat", "nls_cp437", "nls_iso8859-1", "nls_ascii", "efivarfs", "loop", "erofs", "overlay"}; !slices.Equal(all, want) {
		t.Errorf("arm64 with everything: %q; want %q", all, want)
	}
}

// arm64Modules is the modules directory of a real Debian arm64 kernel,
// which .ci/setup downloads (linux-image-arm64:arm64) and indexes with
// depmod into the cache, or the test is skipped naming what is missing.
func arm64Modules(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("PACKER_NIXOS_CACHE")
	if cache == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			t.Skipf("no cache directory for the arm64 kernel: %v", err)
		}
		cache = filepath.Join(dir, "packer-plugin-nixos")
	}
	deps, _ := filepath.Glob(filepath.Join(cache, "linux-image-arm64/lib/modules/*/modules.dep"))
	if len(deps) != 1 {
		t.Skipf("no Debian arm64 kernel modules with a modules.dep under %s/linux-image-arm64/lib/modules (found %q): make setup (.ci/setup) downloads linux-image-arm64:arm64 there", cache, deps)
	}
	return filepath.Dir(deps[0])
}

// The installer initrd for a real arm64 kernel (Debian's: virtio and
// virtio_ring built in, the transports, disk, console and filesystems
// modules) loads virtio_mmio and virtio_pci with their dependencies,
// virtio_blk, virtio_console, crc32c_generic before ext4, then FAT,
// efivarfs and the etc overlay's modules, every one an AArch64 object;
// amd64's needs on the same kernel leave virtio-mmio out.
func TestBuildArm64Kernel(t *testing.T) {
	dir := arm64Modules(t)
	agent := []byte("\x7fELF arm64 agent")
	build := func(goarch string) (order []string, tree string) {
		var buf bytes.Buffer
		needs := Needs{GOARCH: goarch, FAT: true, EFIVars: true, EtcOverlay: true}
		if err := Build(&buf, Options{AgentData: agent, ModulesDir: dir, Needs: &needs}); err != nil {
			t.Fatal(err)
		}
		_, tree = listCpio(t, buf.Bytes())
		b, err := os.ReadFile(filepath.Join(tree, "lib/modules/load-order"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(string(b)), tree
	}
	order, tree := build("arm64")
	t.Logf("%s: %s", filepath.Base(dir), order)
	want := []string{"virtio_mmio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "virtio_console",
		"crc32c_generic", "crc16", "mbcache", "jbd2", "ext4", "fat", "vfat", "nls_cp437", "nls_iso8859_1", "nls_ascii",
		"efivarfs", "loop", "libcrc32c", "erofs", "overlay"}
	for i := range want {
		want[i] += ".ko"
	}
	if !slices.Equal(order, want) {
		t.Errorf("load order\n%q\nwant\n%q", order, want)
	}
	for _, m := range order {
		f, err := elf.Open(filepath.Join(tree, "lib/modules", m))
		if err != nil {
			t.Errorf("%s: %v", m, err)
			continue
		}
		if f.Machine != elf.EM_AARCH64 || f.Type != elf.ET_REL {
			t.Errorf("%s is a %v %v, not an AArch64 module", m, f.Machine, f.Type)
		}
		f.Close()
	}
	if init, err := os.ReadFile(filepath.Join(tree, "init")); err != nil || !bytes.Equal(init, agent) {
		t.Errorf("init holds %q (%v); want the agent", init, err)
	}
	if order, _ := build("amd64"); slices.Contains(order, "virtio_mmio.ko") || !slices.Contains(order, "virtio_pci.ko") {
		t.Errorf("amd64's needs on the arm64 kernel load %q: virtio_pci without virtio_mmio wanted", order)
	}
}
