package nixos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/ova"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/diskout"
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

	if c.format.Name == "raw" {
		if err := os.Rename(raw, final); err != nil {
			return halt(state, fmt.Errorf("naming the image: %w", err))
		}
	} else {
		ui.Say(fmt.Sprintf("Converting the image to %s...", c.format.Name))
		bar := uiprogress.New(ui, c.ImageFile(), 10000)
		err := diskout.Write(ctx, diskout.Job{
			Driver: state.Get("qemu-img").(qemuimg.Driver), Spec: c.format,
			Src: raw, SrcFormat: "raw", Final: final,
			Deterministic: *c.Deterministic, Time: c.epoch,
			// Container UUIDs from the image's content: the same image
			// gets the same ones, another image others (VirtualBox
			// refuses two disks with one UUID).
			Seed:     func() ([]byte, error) { return normalize.ContentSeed(raw, state.Get("plan").(*plan).seed) },
			Machine:  ova.Machine{Name: c.ImageName, CPUs: c.OVACPUs, MemoryMiB: c.OVAMemory, Firmware: c.OVAFirmware},
			Progress: bar.Percent,
			Say:      func(l string) { ui.Say("Normalised the " + l) },
		})
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
