package nixos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// stepResolveSystem finds the toplevel to install (building it from a
// flake or a Nix file), and refuses a path that is not one before any
// image work starts.
type stepResolveSystem struct{}

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
	t, err := inspectToplevel(system)
	if err != nil {
		return halt(state, fmt.Errorf("%s: %w", key, err))
	}
	ui.Say(fmt.Sprintf("System: %s (kernel %s)", system, t.kernelVersion))
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

// toplevel is what install mode needs from a system.build.toplevel.
type toplevel struct {
	path          string
	kernel        string // bzImage
	modulesDir    string // <kernel-modules>/lib/modules/<version>, "" if the kernel has no modules
	kernelVersion string
}

// inspectToplevel checks that path is a NixOS system: it has the switch
// script the installer runs and a kernel to boot the installer VM with.
func inspectToplevel(path string) (*toplevel, error) {
	t := &toplevel{path: path}
	for _, need := range []string{"bin/switch-to-configuration", "kernel", "activate"} {
		if _, err := os.Stat(filepath.Join(path, need)); err != nil {
			return nil, fmt.Errorf("%s is not a NixOS system (config.system.build.toplevel): it has no %s", path, need)
		}
	}
	t.kernel = filepath.Join(path, "kernel")
	t.kernelVersion = "with everything built in"
	if _, err := os.Stat(filepath.Join(path, "kernel-modules")); err == nil {
		dir, err := ModulesDir(filepath.Join(path, "kernel-modules"))
		if err != nil {
			return nil, err
		}
		t.modulesDir, t.kernelVersion = dir, filepath.Base(dir)
	}
	return t, nil
}
