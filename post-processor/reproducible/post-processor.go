//go:generate packer-sdc struct-markdown
//go:generate packer-sdc mapstructure-to-hcl2 -type Config

// Package reproducible is the nixos-reproducible post-processor: it
// rewrites an artifact's disk image in place so that rebuilds of the same
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
	// Seed of every GUID and UUID written: the partition table's disk and
	// partition GUIDs and MBR signature, and a container's UUIDs. Defaults
	// to `packer-plugin-nixos`; give each image its own where several must
	// coexist (VirtualBox refuses two disks with one UUID).
	Seed string `mapstructure:"seed" required:"false"`

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
	if c.Seed == "" {
		c.Seed = "packer-plugin-nixos"
	}
	var err error
	if c.epoch, err = normalize.Epoch(c.SourceDateEpoch); err != nil {
		return err
	}
	return nil
}

// PostProcess rewrites the input's disk image in place. The artifact it
// returns names the same file, so it tells Packer to keep the input: its
// cleanup must not delete the image it hands on.
func (p *PostProcessor) PostProcess(ctx context.Context, ui packersdk.Ui, in packersdk.Artifact) (packersdk.Artifact, bool, bool, error) {
	disk, err := diskartifact.Find(in)
	if err != nil {
		return nil, false, false, fmt.Errorf("nixos-reproducible: %w", err)
	}
	ui.Say(fmt.Sprintf("Normalising %s (%s) for reproducibility (time %d)", disk.Path, disk.Format.Qemu, p.config.epoch))
	lines, err := normalize.Image(disk.Path, normalize.Options{Seed: []byte(p.config.Seed), Time: p.config.epoch})
	if err != nil {
		return nil, false, false, fmt.Errorf("nixos-reproducible: %w", err)
	}
	for _, l := range lines {
		ui.Message(l)
	}
	return &diskartifact.Artifact{ID: BuilderID, Path: disk.Path, Format: disk.Format, Carry: disk.State}, true, true, nil
}
