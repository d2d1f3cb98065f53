package nixos

import (
	"context"
	"fmt"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// stepClosure checks every root against the host's Nix database and computes
// the closure: every store path the image must hold.
type stepClosure struct{}

func (s *stepClosure) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	store := state.Get("store").(*nixstore.Store)

	roots := c.Roots()
	if t, ok := state.GetOk("system"); ok {
		roots = append([]string{t.(*toplevel).path}, c.AdditionalPaths...)
	}
	if ch, ok := state.GetOk("channel"); ok {
		roots = append(roots, ch.(string))
	}
	for _, r := range roots {
		if err := store.Check(r); err != nil {
			return halt(state, fmt.Errorf("store_paths: %w", err))
		}
	}
	ui.Say(fmt.Sprintf("Computing the closure of %d store path(s)...", len(roots)))
	infos, err := store.Closure(ctx, roots)
	if err != nil {
		return halt(state, fmt.Errorf("computing the closure: %w", err))
	}
	var nar int64
	for _, i := range infos {
		nar += i.NarSize
	}
	ui.Say(fmt.Sprintf("Closure: %d store paths, %s", len(infos), humanBytes(nar)))
	state.Put("closure", infos)
	return multistep.ActionContinue
}

func (s *stepClosure) Cleanup(multistep.StateBag) {}

func halt(state multistep.StateBag, err error) multistep.StepAction {
	state.Put("error", err)
	state.Get("ui").(packersdk.Ui).Error(err.Error())
	return multistep.ActionHalt
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
