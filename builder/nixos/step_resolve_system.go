package nixos

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/binarycache"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/storeview"
)

// stepResolveSystem finds the toplevel to install (building it from a
// flake or a Nix file), and refuses a path that is not one, or a system the
// layout or the installer cannot serve (checkBootTargets), before any image
// work starts.
type stepResolveSystem struct {
	// storeDir is the Nix store the system's files name: "" for
	// /nix/store; in tests, a store of their own.
	storeDir string
	viewDir  string // where a system from binary caches is unpacked
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
	var files systemFiles = hostFiles{}
	if nars, ok := state.GetOk("nars"); ok {
		// From binary caches: what the host reads of the system (its boot
		// loader's settings, kernel and modules) is unpacked from the NARs
		// stepFetch spooled, as it is needed.
		dir, err := os.MkdirTemp("", "packer-nixos-system-")
		if err != nil {
			return halt(state, err)
		}
		s.viewDir = dir
		view := storeview.New(dir, binarycache.StoreDir, spooledNARs(nars.([]*binarycache.Spooled)))
		files = view
		ui.Say(fmt.Sprintf("Reading the system from its NARs (what the host needs of it is unpacked in %s)", dir))
		defer func() {
			ui.Message(fmt.Sprintf("Unpacked %s of the system's files for the host", humanBytes(view.Unpacked())))
		}()
	}
	t, err := inspectToplevel(system, s.storeDir, files)
	if err != nil {
		return halt(state, fmt.Errorf("%s: %w", key, err))
	}
	ui.Say(fmt.Sprintf("System: %s (%s, kernel %s)", system, t.arch.Name, t.kernelVersion))
	if err := t.checkArch(c); err != nil {
		return halt(state, err)
	}
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

func (s *stepResolveSystem) Cleanup(multistep.StateBag) {
	if s.viewDir != "" {
		os.RemoveAll(s.viewDir)
	}
}

// spooledNARs opens the spooled NAR of a store path by its base name.
func spooledNARs(nars []*binarycache.Spooled) storeview.NAR {
	byBase := make(map[string]*binarycache.Spooled, len(nars))
	for _, n := range nars {
		byBase[path.Base(n.Info.Path)] = n
	}
	return func(base string) (io.ReadCloser, int64, bool, error) {
		n, ok := byBase[base]
		if !ok {
			return nil, 0, false, nil
		}
		r, err := n.Open()
		return r, n.Size(), true, err
	}
}
