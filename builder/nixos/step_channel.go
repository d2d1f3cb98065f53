package nixos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepChannel adds the nixpkgs source to the store the way make-disk-image
// prepares its channel: a store path holding it as nixos/, with
// nixos/nixpkgs -> . so both <nixos> and <nixpkgs> resolve.
type stepChannel struct{}

// channelName is the store name of the channel path (<hash>-nixos-channel).
const channelName = "nixos-channel"

func (s *stepChannel) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	if !*c.CopyChannel {
		return multistep.ActionContinue
	}
	ui := state.Get("ui").(packersdk.Ui)
	nix := state.Get("nix").(NixBuilder)
	ui.Say(fmt.Sprintf("Adding the channel %s to the store...", c.Channel))

	tmp, err := os.MkdirTemp("", "packer-nixos-channel-")
	if err != nil {
		return halt(state, err)
	}
	defer os.RemoveAll(tmp)
	stage := filepath.Join(tmp, channelName)
	if err := os.Mkdir(stage, 0o755); err != nil {
		return halt(state, err)
	}
	dst := filepath.Join(stage, "nixos")
	if err := state.Get("cp").(FileCopier).CopyTree(ctx, c.Channel, dst); err != nil {
		return halt(state, fmt.Errorf("channel: copying %s: %w", c.Channel, err))
	}
	os.RemoveAll(filepath.Join(dst, ".git"))
	if _, err := os.Lstat(filepath.Join(dst, "nixpkgs")); os.IsNotExist(err) {
		if err := os.Symlink(".", filepath.Join(dst, "nixpkgs")); err != nil {
			return halt(state, err)
		}
	}
	path, err := nix.AddToStore(ctx, stage)
	if err != nil {
		return halt(state, fmt.Errorf("channel: %w", err))
	}
	ui.Say("Channel: " + path)
	state.Put("channel", path)
	return multistep.ActionContinue
}

func (s *stepChannel) Cleanup(multistep.StateBag) {}
