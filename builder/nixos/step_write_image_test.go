package nixos

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// planned is the state after stepPlan, for a store-only image of
// testClosure configured by raw.
func planned(t *testing.T, raw map[string]interface{}) (*multistep.BasicStateBag, *testUI) {
	t.Helper()
	if raw == nil {
		raw = map[string]interface{}{}
	}
	raw["additional_space"] = "1M"
	state, ui := newState(prepared(t, raw))
	state.Put("closure", testClosure(t))
	requireContinue(t, (&stepPlan{}).Run(context.Background(), state), state)
	return state, ui
}

// A store that changes under the build halts it, and Cleanup removes the
// partial image.
func TestStepWriteImageHaltsWhenTheStoreChanges(t *testing.T) {
	state, ui := planned(t, nil)
	f, err := os.OpenFile(filepath.Join(state.Get("closure").([]nixstore.PathInfo)[0].Path, "bin/hello"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("grown since it was measured\n")
	f.Close()
	step := &stepWriteImage{}
	requireHalt(t, step.Run(context.Background(), state), state, ui, "the store changed between measuring and writing")
	if !exists(step.partial) {
		t.Fatalf("no partial image %q to clean up", step.partial)
	}
	step.Cleanup(state)
	if exists(step.partial) {
		t.Errorf("Cleanup left %s", step.partial)
	}
}

// The image is written under a hidden partial name; once renamed into
// place (as stepConvert does) Cleanup leaves it alone.
func TestStepWriteImageWritesThePartialImage(t *testing.T) {
	state, _ := planned(t, nil)
	c := state.Get("config").(*Config)
	step := &stepWriteImage{}
	requireContinue(t, step.Run(context.Background(), state), state)
	raw := state.Get("raw_image").(string)
	fi, err := os.Stat(raw)
	if err != nil || filepath.Base(raw) != "."+c.ImageName+".raw.partial" || fi.Size() != state.Get("plan").(*plan).layout.DiskSize {
		t.Fatalf("raw image %s: %v, %v; want the planned disk under a hidden name", raw, fi, err)
	}
	final := filepath.Join(c.OutputDir, c.ImageFile())
	if err := os.Rename(raw, final); err != nil {
		t.Fatal(err)
	}
	step.Cleanup(state)
	if !exists(final) {
		t.Errorf("Cleanup removed the finished image %s", final)
	}
}
