package nixos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// stepNixState prepares, in a temporary directory, the /nix/var/nix that
// nixos-install leaves: the database registering the closure and the
// system profile (system -> system-1-link -> toplevel).
type stepNixState struct {
	dir string
}

func (s *stepNixState) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	closure := state.Get("closure").([]nixstore.PathInfo)
	system := state.Get("system").(*toplevel)

	dir, err := os.MkdirTemp("", "packer-nixos-state-")
	if err != nil {
		return halt(state, err)
	}
	s.dir = dir
	regTime := c.epoch
	if !*c.Deterministic {
		regTime = time.Now().Unix()
	}
	ui.Say(fmt.Sprintf("Registering %d store paths in the image's Nix database...", len(closure)))
	if err := state.Get("nix-db").(NixDBWriter).Write(ctx, dir, closure, regTime); err != nil {
		return halt(state, err)
	}
	profiles := filepath.Join(dir, "nix", "var", "nix", "profiles")
	if err := os.Symlink(system.path, filepath.Join(profiles, "system-1-link")); err != nil {
		return halt(state, err)
	}
	if err := os.Symlink("system-1-link", filepath.Join(profiles, "system")); err != nil {
		return halt(state, err)
	}
	if ch, ok := state.GetOk("channel"); ok {
		// What nixos-install's nix-env --set leaves for root's channels.
		root := filepath.Join(profiles, "per-user", "root")
		if err := os.MkdirAll(root, 0o755); err != nil {
			return halt(state, err)
		}
		if err := os.Symlink(ch.(string), filepath.Join(root, "channels-1-link")); err != nil {
			return halt(state, err)
		}
		if err := os.Symlink("channels-1-link", filepath.Join(root, "channels")); err != nil {
			return halt(state, err)
		}
	}
	state.Put("nix_state_dir", dir)
	return multistep.ActionContinue
}

func (s *stepNixState) Cleanup(multistep.StateBag) {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}
