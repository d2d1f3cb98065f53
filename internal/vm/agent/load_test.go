package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A compressed module never reaches finit_module: the initrd ships plain
// .ko files, and anything else says where it came from.
func TestLoadModuleRefusesCompressed(t *testing.T) {
	p := filepath.Join(t.TempDir(), "virtio_ring.ko.xz")
	if err := os.WriteFile(p, []byte("\xfd7zXZ\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := loadModule(p)
	if err == nil || !strings.Contains(err.Error(), "virtio_ring.ko.xz is not a plain .ko file") {
		t.Errorf("loadModule(%s): %v", p, err)
	}
}
