package nixos

import (
	"context"
	"os"
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

// A system for another platform is refused before any work, naming it and
// what to do instead; one for x86_64-linux, or without the file, is taken.
func TestStepResolveSystemRefusesOtherPlatforms(t *testing.T) {
	for platform, ok := range map[string]bool{"aarch64-linux": false, "x86_64-linux\n": true, "": true} {
		c := prepared(t, map[string]interface{}{"only_nix_store": false, "system": "", "flake": "/src#host"})
		state, ui := newState(c)
		system := testToplevel(t)
		if platform != "" {
			if err := os.WriteFile(filepath.Join(system, "system"), []byte(platform), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		state.Put("nix", &fakeNix{system: system})
		action := (&stepResolveSystem{}).Run(context.Background(), state)
		if ok {
			requireContinue(t, action, state)
			continue
		}
		requireHalt(t, action, state, ui, `flake: `+system+` is a NixOS system for "aarch64-linux": install mode boots the system's own kernel in an x86_64 QEMU VM, so it installs x86_64-linux systems only; build a store-only image of it (only_nix_store = true) instead`)
	}
}
