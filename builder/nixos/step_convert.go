package nixos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepConvert turns the raw image into the requested format and gives it
// its final name; only a complete image ever carries that name.
type stepConvert struct {
	partial string
}

func (s *stepConvert) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	raw := state.Get("raw_image").(string)
	final := filepath.Join(c.OutputDir, c.ImageFile())

	if c.Format != "raw" {
		qemuImg := state.Get("qemu-img").(QemuImg)
		s.partial = filepath.Join(c.OutputDir, "."+c.ImageFile()+".partial")
		ui.Say(fmt.Sprintf("Converting the image to %s...", c.Format))
		if err := qemuImg.Convert(ctx, raw, s.partial, c.Format); err != nil {
			return halt(state, err)
		}
		os.Remove(raw)
		raw = s.partial
	}
	if err := os.Rename(raw, final); err != nil {
		return halt(state, fmt.Errorf("naming the image: %w", err))
	}
	fi, err := os.Stat(final)
	if err != nil {
		return halt(state, err)
	}
	ui.Say(fmt.Sprintf("Image: %s (%s, %s on disk)", final, c.Format, humanBytes(allocated(fi))))
	state.Put("image_path", final)
	return multistep.ActionContinue
}

func (s *stepConvert) Cleanup(multistep.StateBag) {
	if s.partial != "" {
		os.Remove(s.partial)
	}
}
