package fat

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/bootcheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fattest"
)

// TestKernelMount has Linux's vfat driver read an ESP image under QEMU.
func TestKernelMount(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel")
	}
	if _, err := bootcheck.DefaultKernel(); err != nil {
		t.Skipf("no kernel: %v", err)
	}
	requireTool(t, "qemu-system-x86_64")
	const size, offset = 64 << 20, 1 << 20
	img, f := newImage(t, offset+size)
	tree := fattest.ESPTree(8 << 20)
	write(t, f, offset, Options{Size: size, Label: "ESP", VolumeID: 7, Time: testTime}, tree)
	want := map[string]string{}
	for _, e := range tree {
		if !e.Dir {
			s := sha256.Sum256(e.Data)
			want[e.Name] = hex.EncodeToString(s[:])
		}
	}
	_, err := bootcheck.Run(context.Background(), bootcheck.Check{Image: img, Offset: offset, FSType: "vfat", Files: want})
	if err != nil {
		t.Fatal(err)
	}
}
