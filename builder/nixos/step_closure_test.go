package nixos

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

func TestStepClosureHaltsOnAnInvalidRoot(t *testing.T) {
	state, ui := newState(prepared(t, nil))
	store := &fakeStore{checkErr: errFake}
	state.Put("store", store)
	requireHalt(t, (&stepClosure{}).Run(context.Background(), state), state, ui, "store_paths: fake failure")
	if store.roots != nil {
		t.Error("the closure was computed from an invalid root")
	}
}

func TestStepClosureHaltsWhenTheDatabaseFails(t *testing.T) {
	state, ui := newState(prepared(t, nil))
	state.Put("store", &fakeStore{closureErr: errFake})
	requireHalt(t, (&stepClosure{}).Run(context.Background(), state), state, ui, "computing the closure: fake failure")
	if _, ok := state.GetOk("closure"); ok {
		t.Error("a closure was put in the state bag")
	}
}

// In install mode the roots are the system, the additional paths and the
// channel, in that order; the closure is kept for the later steps.
func TestStepClosureStoresTheClosure(t *testing.T) {
	extra := "/nix/store/44444444444444444444444444444444-extra"
	state, ui := newState(prepared(t, map[string]interface{}{"only_nix_store": false, "additional_paths": []string{extra}}))
	state.Put("system", &toplevel{path: "/nix/store/55555555555555555555555555555555-system"})
	state.Put("channel", "/nix/store/66666666666666666666666666666666-nixos-channel")
	closure := testClosure(t)
	store := &fakeStore{closure: closure}
	state.Put("store", store)
	step := &stepClosure{}
	requireContinue(t, step.Run(context.Background(), state), state)
	step.Cleanup(state)
	want := []string{"/nix/store/55555555555555555555555555555555-system", extra, "/nix/store/66666666666666666666666666666666-nixos-channel"}
	if !slices.Equal(store.roots, want) {
		t.Errorf("roots %q; want %q", store.roots, want)
	}
	if got := state.Get("closure").([]nixstore.PathInfo); len(got) != len(closure) || got[0].Path != closure[0].Path {
		t.Errorf("closure %v; want %v", got, closure)
	}
	if want := "Closure: 2 store paths, 8.0 KiB"; !strings.Contains(ui.out.String(), want) {
		t.Errorf("the user was told %q; want %q", ui.out, want)
	}
}
