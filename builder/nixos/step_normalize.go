package nixos

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/fat"
)

// stepNormalize undoes what is not reproducible in the installer VM's
// writes (times, inode generations and versions, the journal's history,
// FAT times and FSInfo hints), so deterministic install-mode images match
// the host-written parts in kind.
type stepNormalize struct{}

func (s *stepNormalize) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	if !*c.Deterministic {
		return multistep.ActionContinue
	}
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("plan").(*plan)
	f, err := os.OpenFile(state.Get("raw_image").(string), os.O_RDWR, 0)
	if err != nil {
		return halt(state, err)
	}
	defer f.Close()

	root := p.layout.Root()
	r, err := ext4.Normalize(f, root.Start, root.Size, ext4.NormalizeOptions{Time: p.epoch})
	if err != nil {
		return halt(state, fmt.Errorf("normalising the root filesystem: %w", err))
	}
	msg := fmt.Sprintf("Normalised the root filesystem: %d inode times, %d generations", r.TimesChanged, r.GenerationsZeroed)
	if r.JournalCleared {
		msg += ", journal cleared"
	}
	for _, role := range []disk.Role{disk.RoleESP, disk.RoleXBootLdr} {
		if pt, ok := p.layout.Find(role); ok {
			fr, err := fat.Normalize(f, pt.Start, pt.Size, fat.NormalizeOptions{Time: p.epoch})
			if err != nil {
				return halt(state, fmt.Errorf("normalising the %s partition: %w", role, err))
			}
			msg += fmt.Sprintf("; %s: %d entry times, %d free clusters cleared", role, fr.TimesChanged, fr.FreeCleared)
		}
	}
	ui.Say(msg)
	if err := f.Sync(); err != nil {
		return halt(state, err)
	}
	return multistep.ActionContinue
}

func (s *stepNormalize) Cleanup(multistep.StateBag) {}
