package nixos

import (
	"context"
	"fmt"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepClosure checks every root against the host's Nix database and computes
// the closure: every store path the image must hold. From binary caches it
// also keeps their narinfos ("cache_closure") for stepFetch.
type stepClosure struct{}

func (s *stepClosure) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	store := state.Get("store").(ClosureReader)

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
	if cr, ok := store.(CacheClosureReader); ok {
		state.Put("cache_closure", cr.CacheClosure())
	}
	return multistep.ActionContinue
}

func (s *stepClosure) Cleanup(multistep.StateBag) {}
