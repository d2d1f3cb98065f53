//go:generate packer-sdc struct-markdown
//go:generate packer-sdc mapstructure-to-hcl2 -type Config

// Package reproducible is the nixos-reproducible post-processor: it
// rewrites an artifact's disk image so that rebuilds of the same
// inputs are byte-identical, and says what it changed.
package reproducible

import (
	"context"
	"fmt"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/packer-plugin-sdk/common"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/atomicedit"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/diskartifact"
)

// BuilderID is the id of the artifacts nixos-reproducible emits.
const BuilderID = "nixos.post-processor.reproducible"

type Config struct {
	common.PackerConfig `mapstructure:",squash"`
	// Unix time that every later time stamp is lowered to. Defaults to the
	// `SOURCE_DATE_EPOCH` environment variable, else 1.
	SourceDateEpoch *int64 `mapstructure:"source_date_epoch" required:"false"`
	// Seed of every UUID written: a container's UUIDs and, with
	// `rederive_ids`, the partition table's GUIDs and MBR signature. By
	// default it derives from the image's content once the rest is
	// normalised: the same image gets the same UUIDs, different images
	// different ones (VirtualBox refuses two disks with one UUID).
	Seed string `mapstructure:"seed" required:"false"`
	// Replace the disk and partition GUIDs and the MBR disk signature with
	// ones derived from `seed`. Off by default: the installed system refers
	// to them (`root=PARTUUID=…`, `/dev/disk/by-partuuid` in fstab, the boot
	// entry in EFI variables), and those references break. Only for images
	// whose system refers to filesystem labels or UUIDs, which are always
	// kept.
	RederiveIDs bool `mapstructure:"rederive_ids" required:"false"`
	// Rewrite the image where it is instead of through a copy. The copy
	// (a reflink where the filesystem can share blocks, else a sparse
	// copy) needs free space for the image's data and replaces the input
	// only when complete, so a failure, Ctrl-C or kill leaves the input
	// untouched; in place, they leave a half-normalised image.
	InPlace bool `mapstructure:"in_place" required:"false"`

	epoch int64
	ctx   interpolate.Context
}

type PostProcessor struct{ config Config }

var _ packersdk.PostProcessor = (*PostProcessor)(nil)

func (p *PostProcessor) ConfigSpec() hcldec.ObjectSpec { return p.config.FlatMapstructure().HCL2Spec() }

func (p *PostProcessor) Configure(raws ...interface{}) error {
	c := &p.config
	if err := config.Decode(c, &config.DecodeOpts{
		PluginType:         "nixos-reproducible",
		Interpolate:        true,
		InterpolateContext: &c.ctx,
	}, raws...); err != nil {
		return err
	}
	var err error
	if c.epoch, err = normalize.Epoch(c.SourceDateEpoch); err != nil {
		return err
	}
	return nil
}

// rewrite normalises the image at path, through a copy unless inPlace.
func rewrite(ctx context.Context, path string, o normalize.Options, inPlace bool) ([]string, error) {
	if inPlace {
		return normalize.Image(ctx, path, o)
	}
	var lines []string
	err := atomicedit.Edit(ctx, path, func(ctx context.Context, copy string) (err error) {
		lines, err = normalize.Image(ctx, copy, o)
		return err
	})
	return lines, err
}

// PostProcess rewrites the input's disk image. The artifact it
// returns names the same file, so it tells Packer to keep the input: its
// cleanup must not delete the image it hands on.
func (p *PostProcessor) PostProcess(ctx context.Context, ui packersdk.Ui, in packersdk.Artifact) (packersdk.Artifact, bool, bool, error) {
	disk, err := diskartifact.Find(in)
	if err != nil {
		return nil, false, false, fmt.Errorf("nixos-reproducible: %w", err)
	}
	how := "through a copy"
	if p.config.InPlace {
		how = "in place"
	}
	ui.Say(fmt.Sprintf("Normalising %s (%s) for reproducibility (time %d, %s)", disk.Path, disk.Format.Qemu, p.config.epoch, how))
	o := normalize.Options{Time: p.config.epoch, RederiveIDs: p.config.RederiveIDs}
	if p.config.Seed != "" {
		o.Seed = []byte(p.config.Seed)
	}
	lines, err := rewrite(ctx, disk.Path, o, p.config.InPlace)
	if err != nil {
		return nil, false, false, fmt.Errorf("nixos-reproducible: %w", err)
	}
	for _, l := range lines {
		ui.Message(l)
	}
	return &diskartifact.Artifact{ID: BuilderID, Path: disk.Path, Format: disk.Format, Carry: disk.State}, true, true, nil
}
