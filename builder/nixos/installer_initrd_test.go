package nixos

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentbin"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/initrd"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

// A system with system.etc.overlay needs loop, erofs and overlay from its
// kernel; one that lacks any is refused before the VM, naming them. A
// system without the overlay, or a kernel with everything built in, is
// not checked.
func TestCheckEtcOverlay(t *testing.T) {
	sys := t.TempDir()
	mods := t.TempDir()
	os.WriteFile(filepath.Join(mods, "modules.dep"), []byte("kernel/drivers/block/loop.ko.xz:\n"), 0o644)
	os.WriteFile(filepath.Join(mods, "modules.builtin"), []byte("kernel/fs/overlayfs/overlay.ko\n"), 0o644)
	system := &toplevel{path: sys, modulesDir: mods}
	if err := checkEtcOverlay(system); err != nil {
		t.Errorf("a system without etc-metadata-image: %v", err)
	}
	os.WriteFile(filepath.Join(sys, "etc-metadata-image"), nil, 0o644)
	err := checkEtcOverlay(system)
	if err == nil || !strings.Contains(err.Error(), "system.etc.overlay") || !strings.Contains(err.Error(), "no erofs module") {
		t.Errorf("a kernel without erofs: %v", err)
	}
	os.WriteFile(filepath.Join(mods, "modules.dep"), []byte("kernel/drivers/block/loop.ko.xz:\nkernel/fs/erofs/erofs.ko.xz:\n"), 0o644)
	if err := checkEtcOverlay(system); err != nil {
		t.Errorf("a kernel with all three: %v", err)
	}
	if err := checkEtcOverlay(&toplevel{path: sys}); err != nil {
		t.Errorf("a kernel with everything built in: %v", err)
	}
}

// The installer initrd's /init is the agent for the system's architecture
// (systemArch reads it from its platform), whatever the host's: an aarch64
// system's gets the arm64 agent.
func TestInstallerInitrdAgentFollowsThePlatform(t *testing.T) {
	for _, arch := range []qemu.Arch{qemu.AArch64, qemu.X86_64} {
		want, _, ok := agentbin.Agent(arch.GOARCH)
		if !ok {
			t.Fatalf("no %s agent embedded: run `make build` (or go generate ./internal/vm/agentbin) first", arch.GOARCH)
		}
		other, _, _ := agentbin.Agent(map[string]string{"arm64": "amd64", "amd64": "arm64"}[arch.GOARCH])
		system := &toplevel{path: t.TempDir(), arch: arch}
		path := filepath.Join(t.TempDir(), "initrd")
		if err := writeInstallerInitrd(path, system, false, initrd.Needs{}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, want) || bytes.Contains(b, other) {
			t.Errorf("%s: the initrd does not hold the %s agent alone", arch.Name, arch.GOARCH)
		}
	}
}
