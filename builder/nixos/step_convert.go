package nixos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/uiprogress"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// stepConvert turns the raw image into the requested format (as the
// nixos-convert post-processor does) and gives it its final name; only a
// complete image ever carries that name.
type stepConvert struct{}

func (s *stepConvert) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	raw := state.Get("raw_image").(string)
	final := filepath.Join(c.OutputDir, c.ImageFile())

	if c.format.Qemu == "raw" {
		if err := os.Rename(raw, final); err != nil {
			return halt(state, fmt.Errorf("naming the image: %w", err))
		}
	} else {
		var finish func(string) error
		if *c.Deterministic && c.format.IDs {
			// Container UUIDs from the image's content: the same image
			// gets the same ones, another image others (VirtualBox
			// refuses two disks with one UUID).
			seed, err := normalize.ContentSeed(raw, state.Get("plan").(*plan).seed)
			if err != nil {
				return halt(state, err)
			}
			finish = func(staged string) error {
				lines, err := normalize.Container(staged, normalize.Options{Seed: seed, Time: c.epoch})
				if err == nil {
					ui.Say("Normalised the " + strings.Join(lines, "; "))
				}
				return err
			}
		}
		ui.Say(fmt.Sprintf("Converting the image to %s...", c.format.Name))
		bar := uiprogress.New(ui, c.ImageFile(), 10000)
		err := qemuimg.ConvertTo(ctx, state.Get("qemu-img").(qemuimg.Driver), c.format, raw, "raw", final, bar.Percent, finish)
		bar.Close()
		if err != nil {
			return halt(state, err)
		}
		os.Remove(raw)
	}
	fi, err := os.Stat(final)
	if err != nil {
		return halt(state, err)
	}
	ui.Say(fmt.Sprintf("Image: %s (%s, %s on disk)", final, c.format.Name, humanBytes(allocated(fi))))
	state.Put("image_path", final)
	return multistep.ActionContinue
}

func (s *stepConvert) Cleanup(multistep.StateBag) {}
