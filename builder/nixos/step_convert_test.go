package nixos

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// rawImage is what stepWriteImage leaves: a raw image in the output
// directory under its hidden partial name.
func rawImage(t *testing.T, c *Config) string {
	t.Helper()
	raw := filepath.Join(c.OutputDir, "."+c.ImageName+".raw.partial")
	if err := os.WriteFile(raw, []byte("raw image"), 0o644); err != nil {
		t.Fatal(err)
	}
	return raw
}

// A failed conversion halts, leaves no image under the final name and no
// staging directory, and keeps the raw image for stepWriteImage's Cleanup.
func TestStepConvertHaltsWhenQemuImgFails(t *testing.T) {
	c := prepared(t, map[string]interface{}{"format": "qcow2"})
	state, ui := newState(c)
	raw := rawImage(t, c)
	state.Put("raw_image", raw)
	state.Put("qemu-img", &fakeQemuImg{err: errFake})
	requireHalt(t, (&stepConvert{}).Run(context.Background(), state), state, ui, "fake failure")
	if ents, _ := os.ReadDir(c.OutputDir); len(ents) != 1 || !exists(raw) {
		t.Errorf("the output directory holds %v; want only the raw image", ents)
	}
}

// qemu-img reads the raw image as raw and writes under the final base
// name; the result is renamed into place and the raw image removed.
func TestStepConvertConvertsIntoPlace(t *testing.T) {
	c := prepared(t, map[string]interface{}{"format": "qcow2"})
	state, _ := newState(c)
	raw := rawImage(t, c)
	state.Put("raw_image", raw)
	qemuImg := &fakeQemuImg{}
	state.Put("qemu-img", qemuImg)
	step := &stepConvert{}
	requireContinue(t, step.Run(context.Background(), state), state)
	step.Cleanup(state)
	final := filepath.Join(c.OutputDir, "nixos.qcow2")
	if len(qemuImg.converts) != 1 {
		t.Fatalf("qemu-img converted %d times; want once", len(qemuImg.converts))
	}
	if cv := qemuImg.converts[0]; cv.spec.Qemu != "qcow2" || cv.src != raw || cv.srcFormat != "raw" || filepath.Base(cv.dst) != "nixos.qcow2" {
		t.Errorf("qemu-img convert %+v; want qcow2 from the raw image read as raw, into nixos.qcow2", cv)
	}
	if b, err := os.ReadFile(final); err != nil || string(b) != "converted" {
		t.Errorf("%s: %q, %v; want the converted image", final, b, err)
	}
	if exists(raw) {
		t.Error("the raw image was left beside the converted one")
	}
	if state.Get("image_path") != final {
		t.Errorf("image_path %v; want %s", state.Get("image_path"), final)
	}
}

// format = raw needs no qemu-img: the image is renamed.
func TestStepConvertRenamesARawImage(t *testing.T) {
	c := prepared(t, nil)
	state, _ := newState(c)
	raw := rawImage(t, c)
	state.Put("raw_image", raw)
	qemuImg := &fakeQemuImg{}
	state.Put("qemu-img", qemuImg)
	requireContinue(t, (&stepConvert{}).Run(context.Background(), state), state)
	if b, err := os.ReadFile(filepath.Join(c.OutputDir, "nixos.img")); err != nil || string(b) != "raw image" || exists(raw) || len(qemuImg.converts) != 0 {
		t.Errorf("nixos.img: %q, %v, %d conversions, %s left %v; want the raw image renamed", b, err, len(qemuImg.converts), raw, exists(raw))
	}
}

// Renaming fails when the raw image is gone.
func TestStepConvertHaltsWithoutTheRawImage(t *testing.T) {
	c := prepared(t, nil)
	state, ui := newState(c)
	state.Put("raw_image", filepath.Join(c.OutputDir, "missing.raw"))
	requireHalt(t, (&stepConvert{}).Run(context.Background(), state), state, ui, "naming the image: ")
}
