package nixos

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepResolveSystem finds the toplevel to install (building it from a
// flake or a Nix file), and refuses a path that is not one, or a system the
// layout or the installer cannot serve (checkBootTargets), before any image
// work starts.
type stepResolveSystem struct {
	// storeDir is the Nix store the system's files name: "" for
	// /nix/store; in tests, a store of their own.
	storeDir string
}

func (s *stepResolveSystem) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	nix := state.Get("nix").(NixBuilder)

	key, system := "system", c.System
	var err error
	switch {
	case c.Flake != "":
		key = "flake"
		ref, name, _ := strings.Cut(c.Flake, "#")
		ui.Say(fmt.Sprintf("Building the system %s...", c.Flake))
		system, err = nix.BuildFlake(ctx, ref, name)
	case c.NixFile != "":
		key = "nix_file"
		ui.Say(fmt.Sprintf("Building the system %s -A %s...", c.NixFile, c.Attribute))
		system, err = nix.BuildFile(ctx, c.NixFile, c.Attribute)
	}
	if err != nil {
		return halt(state, fmt.Errorf("%s: %w", key, err))
	}
	t, err := inspectToplevel(system, s.storeDir)
	if err != nil {
		return halt(state, fmt.Errorf("%s: %w", key, err))
	}
	ui.Say(fmt.Sprintf("System: %s (kernel %s)", system, t.kernelVersion))
	// What the system wants of the layout and the installer VM is checked
	// now, before the image is written or a VM boots.
	notes, err := t.checkBootTargets(c)
	if err != nil {
		return halt(state, err)
	}
	for _, n := range notes {
		ui.Message(n)
	}
	if d := t.describe(c.layout); d != "" {
		ui.Say("Boot: " + d)
	}
	if c.InstallerKernel != "" {
		// The installer VM boots this kernel instead; the system's own
		// kernel is still what the image boots.
		t.kernel, t.modulesDir = c.InstallerKernel, ""
		if c.InstallerModules != "" {
			t.modulesDir, _ = ModulesDir(c.InstallerModules)
		}
		ui.Say(fmt.Sprintf("Installer kernel: %s", c.InstallerKernel))
	}
	state.Put("system", t)
	return multistep.ActionContinue
}

func (s *stepResolveSystem) Cleanup(multistep.StateBag) {}
