package nixos

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
)

func TestStepResolveSystemHaltsWhenTheBuildFails(t *testing.T) {
	c := prepared(t, map[string]interface{}{"only_nix_store": false, "system": "", "flake": "/src#host"})
	state, ui := newState(c)
	nix := &fakeNix{err: errFake}
	state.Put("nix", nix)
	requireHalt(t, (&stepResolveSystem{}).Run(context.Background(), state), state, ui, "flake: fake failure")
	if !slices.Equal(nix.built, []string{"flake /src host"}) {
		t.Errorf("built %q; want the flake's configuration host", nix.built)
	}
	if _, ok := state.GetOk("system"); ok {
		t.Error("a system was put in the state bag")
	}
}

func TestStepResolveSystemRefusesWhatIsNotASystem(t *testing.T) {
	c := prepared(t, map[string]interface{}{"only_nix_store": false, "system": "", "nix_file": "/src/default.nix"})
	state, ui := newState(c)
	nix := &fakeNix{system: t.TempDir()}
	state.Put("nix", nix)
	requireHalt(t, (&stepResolveSystem{}).Run(context.Background(), state), state, ui,
		"nix_file: "+nix.system+" is not a NixOS system (config.system.build.toplevel): it has no bin/switch-to-configuration")
	if !slices.Equal(nix.built, []string{"file /src/default.nix config.system.build.toplevel"}) {
		t.Errorf("built %q; want the file's default attribute", nix.built)
	}
}

// The built system, its kernel, and Cleanup keeping it for the later steps.
func TestStepResolveSystemPutsTheSystem(t *testing.T) {
	c := prepared(t, map[string]interface{}{"only_nix_store": false, "system": "", "flake": "/src#host"})
	state, _ := newState(c)
	system := testToplevel(t)
	state.Put("nix", &fakeNix{system: system})
	step := &stepResolveSystem{}
	requireContinue(t, step.Run(context.Background(), state), state)
	step.Cleanup(state)
	got, ok := state.Get("system").(*toplevel)
	if !ok || got.path != system || got.kernel != filepath.Join(system, "kernel") || got.modulesDir != "" {
		t.Fatalf("system %+v; want %s with its kernel and no modules", got, system)
	}
}
