package nixos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
