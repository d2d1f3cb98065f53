// Package nixos is the nixos-image builder: it writes a NixOS disk image on
// the host, streaming the closure into a filesystem it lays out itself.
package nixos

import (
	"context"
	"errors"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/steprun"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/vmlinux"
)

// BuilderID identifies artifacts of this builder.
const BuilderID = "packer-plugin-nixos.image"

// Builder is the nixos-image builder.
type Builder struct {
	config Config
	runner multistep.Runner
}

func (b *Builder) ConfigSpec() hcldec.ObjectSpec { return b.config.FlatMapstructure().HCL2Spec() }

func (b *Builder) Prepare(raws ...interface{}) ([]string, []string, error) {
	warnings, err := b.config.Prepare(raws...)
	if err != nil {
		return nil, warnings, err
	}
	return generatedData, warnings, nil
}

// generatedData are the variables later provisioners and post-processors can
// read as build.<Name>.
var generatedData = []string{"ImagePath", "ImageFormat", "DiskSize", "StorePathCount", "PartitionTableType", stageops.GeneratedKey}

func (b *Builder) Run(ctx context.Context, ui packersdk.Ui, hook packersdk.Hook) (packersdk.Artifact, error) {
	state := new(multistep.BasicStateBag)
	state.Put("config", &b.config)
	state.Put("hook", hook)
	state.Put("ui", ui)
	// The host programs the steps run, each behind its interface (driver.go).
	// The host's Nix store, or the binary caches when substituters are set.
	store, err := closureStore(&b.config, ui)
	if err != nil {
		return nil, err
	}
	state.Put("store", store)
	state.Put("nix-db", nixstore.DBWriter{})
	state.Put("nix", NixDriver{})
	state.Put("cp", CpDriver{})
	state.Put("qemu-img", qemuimg.ExecDriver{})
	state.Put("qemu", qemu.New())

	var steps []multistep.Step
	if b.config.OnlyNixStore {
		// Store-only: find the closure, size the disk, stream the closure
		// into a new image, convert it to the requested format.
		steps = []multistep.Step{
			&steprun.OutputDir{Force: b.config.PackerForce, Path: b.config.OutputDir},
			&stepClosure{},
			&stepFetch{}, // with substituters: every NAR downloaded once
			// Provisioners' uploads are staged, then written with the closure.
			&stepStoreComm{},
			new(steprun.Provision),
			&stepPlan{},
			&stepWriteImage{},
			&stepConvert{},
		}
	} else {
		// Install: the same, with the system's skeleton and Nix database
		// written on the host, then a small VM that only activates the
		// system and installs its boot loader.
		resolve := []multistep.Step{
			&stepResolveSystem{},
			&stepPrepareInstaller{writeInitrd: writeInstallerInitrd, unpack: vmlinux.Extract},
		}
		closure := []multistep.Step{
			&steprun.OutputDir{Force: b.config.PackerForce, Path: b.config.OutputDir},
			&stepClosure{},
			&stepFetch{},
		}
		if b.config.FromCache() {
			// From binary caches the closure comes first: the system is
			// read from its NARs (and no channel is added).
			steps = append(closure, resolve...)
		} else {
			steps = append(append(resolve, &stepChannel{}), closure...)
		}
		steps = append(steps,
			&stepNixState{},
			&stepPlan{},
			&stepWriteImage{},
			&stepInstall{},
			new(steprun.Provision),
			&stepFinishInstall{},
			&stepNormalize{},
			&stepConvert{},
		)
	}

	b.runner = steprun.NewRunner(steps, b.config.PackerConfig, ui)
	b.runner.Run(ctx, state)

	if err, ok := state.GetOk("error"); ok {
		return nil, err.(error)
	}
	if _, ok := state.GetOk(multistep.StateCancelled); ok {
		return nil, errors.New("build was cancelled")
	}
	if _, ok := state.GetOk(multistep.StateHalted); ok {
		return nil, errors.New("build was halted")
	}
	return newArtifact(state), nil
}
