package agent

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/initrd"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// compressedModules copies the host kernel's modules the installer loads
// into a modules tree, compressed as NixOS compresses its own (xz
// --check=crc32 --lzma2=dict=1MiB), every other one with zstd instead,
// indexed by the real depmod: a kernel-modules tree the host's kernel
// (like NixOS's, without CONFIG_MODULE_DECOMPRESS) cannot load as it is.
func compressedModules(t *testing.T, hostDir string) string {
	t.Helper()
	imagecheck.RequireTool(t, "xz", "zstd", "depmod")
	host, err := kmod.Load(hostDir)
	if err != nil {
		t.Fatal(err)
	}
	var roots []string
	for _, m := range initrd.DefaultModules {
		if host.Known(m) {
			roots = append(roots, m)
		}
	}
	mods, err := host.Order(roots)
	if err != nil {
		t.Fatal(err)
	}
	ver := filepath.Base(hostDir)
	base := t.TempDir()
	dir := filepath.Join(base, "lib/modules", ver)
	for i, m := range mods {
		src := host.Path(m)
		tool, ext := []string{"xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"}, ".xz"
		if i%2 == 1 {
			tool, ext = []string{"zstd", "-q", "-c"}, ".zst"
		}
		dst := filepath.Join(dir, strings.TrimPrefix(src, hostDir+"/")+ext)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(dst)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(tool[0], append(tool[1:], src)...)
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = f, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v\n%s", tool[0], src, err, errb.String())
		}
		f.Close()
	}
	for _, idx := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if b, err := os.ReadFile(filepath.Join(hostDir, idx)); err == nil {
			os.WriteFile(filepath.Join(dir, idx), b, 0o644)
		}
	}
	if out, err := exec.Command("depmod", "-b", base, ver).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	return dir
}

// TestQEMUCompressedModules boots the host's kernel with an initrd built
// from xz- and zstd-compressed modules: they load (the agent serves on
// virtio_console, mounts ext4 from virtio_blk), and so do the etc
// overlay's loop, erofs and overlay.
func TestQEMUCompressedModules(t *testing.T) {
	t.Parallel()
	kernel, _ := testInitrd(t)
	dir := compressedModules(t, modulesDir)
	initrdFile := filepath.Join(t.TempDir(), "initrd.gz")
	f, err := os.Create(initrdFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := initrd.Build(f, initrd.Options{Agent: agentPath, ModulesDir: dir}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	v := bootVMWith(t, kernel, initrdFile)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := v.dial(t, ctx) // fails on module errors
	if err := c.Mount(ctx, protocol.MountRequest{Source: "/dev/vda", Target: "/mnt", FSType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	if err := c.BindSystem(ctx, protocol.BindSystemRequest{Root: "/mnt"}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if st, err := c.Exec(ctx, protocol.ExecRequest{Argv: []string{"cat", "/proc/modules"}, Chroot: "/mnt", Env: []string{"PATH=/bin"}}, &out, nil); err != nil || st != 0 {
		t.Fatalf("cat /proc/modules: %v %d", err, st)
	}
	host, _ := kmod.Load(modulesDir)
	for _, m := range append([]string{"virtio_blk", "virtio_console", "ext4"}, initrd.EtcOverlayModules...) {
		if host.Path(m) != "" && !strings.Contains(out.String(), m+" ") {
			t.Errorf("module %s is not loaded:\n%s", m, out.String())
		}
	}
	if err := c.Poweroff(ctx); err != nil {
		t.Fatal(err)
	}
}
