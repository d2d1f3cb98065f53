package nixos

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
)

// An image whose root is not ext4 halts the build.
func TestStepNormalizeHaltsOnABadFilesystem(t *testing.T) {
	state, ui := newState(prepared(t, nil))
	layout := testLayout(t, disk.Legacy)
	raw := filepath.Join(t.TempDir(), "zeros.img")
	if err := os.WriteFile(raw, make([]byte, layout.DiskSize), 0o644); err != nil {
		t.Fatal(err)
	}
	state.Put("plan", &plan{layout: layout, epoch: 1})
	state.Put("raw_image", raw)
	requireHalt(t, (&stepNormalize{}).Run(context.Background(), state), state, ui, "normalising the root filesystem: ")
}

// deterministic = false leaves the image as the VM wrote it: the step
// does not even open it.
func TestStepNormalizeSkippedWhenNotDeterministic(t *testing.T) {
	state, _ := newState(prepared(t, map[string]interface{}{"deterministic": false}))
	state.Put("raw_image", filepath.Join(t.TempDir(), "missing.img"))
	requireContinue(t, (&stepNormalize{}).Run(context.Background(), state), state)
}

// A written image is normalised in place, and Cleanup keeps it.
func TestStepNormalizeNormalisesTheImage(t *testing.T) {
	state, ui := planned(t, nil)
	requireContinue(t, (&stepWriteImage{}).Run(context.Background(), state), state)
	step := &stepNormalize{}
	requireContinue(t, step.Run(context.Background(), state), state)
	step.Cleanup(state)
	if !strings.Contains(ui.out.String(), "Normalised the root filesystem") {
		t.Errorf("the user was told %q; want the normalisation", ui.out)
	}
	if !exists(state.Get("raw_image").(string)) {
		t.Error("the image is gone")
	}
}
