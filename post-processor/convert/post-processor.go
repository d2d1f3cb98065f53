//go:generate packer-sdc struct-markdown
//go:generate packer-sdc mapstructure-to-hcl2 -type Config

// Package convert is the nixos-convert post-processor: any artifact's disk
// image, converted by qemu-img to raw, qcow2, compressed qcow2, vdi, vpc,
// vhdx or vmdk.
package convert

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/packer-plugin-sdk/common"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/ova"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/diskout"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/diskartifact"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/uiprogress"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// BuilderID is the id of the artifacts nixos-convert emits.
const BuilderID = "nixos.post-processor.convert"

type Config struct {
	common.PackerConfig `mapstructure:",squash"`
	// Output format: `raw`, `qcow2`, `qcow2-compressed`, `vdi`, `vpc` (file
	// `.vhd`), `vhdx`, `vmdk`, `vmdk-stream` (stream-optimised, for AWS
	// import-snapshot and VMware), or a cloud's import format: `azure`
	// (fixed `.vhd` of whole MiB), `gce` (`.tar.gz` holding a sparse
	// `disk.raw`) or `ova` (VMware and VirtualBox appliance).
	Format string `mapstructure:"format" required:"true"`
	// qcow2 compression: `zlib` or `zstd` (implies `qcow2-compressed`).
	// Defaults to zlib for `qcow2-compressed`.
	Compression string `mapstructure:"compression" required:"false"`
	// With `format = "ova"`: the appliance's virtual CPUs. Defaults to 2.
	OVACPUs int `mapstructure:"ova_cpus" required:"false"`
	// With `format = "ova"`: the appliance's memory in MiB. Defaults to 2048.
	OVAMemory int `mapstructure:"ova_memory" required:"false"`
	// With `format = "ova"`: `bios` or `efi`. Defaults to what the input
	// says it needs: `efi` for a nixos-image of the `efi` or `efixbootldr`
	// layout, else `bios`.
	OVAFirmware string `mapstructure:"ova_firmware" required:"false"`
	// Path of the converted image. Defaults to the input image's path with
	// the format's extension (`nixos.img` → `nixos.qcow2`). An existing file
	// is an error unless `packer build -force` is used.
	Output string `mapstructure:"output" required:"false"`
	// Make the container's own header reproducible: time stamps from
	// `source_date_epoch`, UUIDs derived from `seed` (vpc, vdi, vhdx, vmdk
	// carry them; raw and qcow2 have none). Defaults to `true`.
	Deterministic *bool `mapstructure:"deterministic" required:"false"`
	// Seed of the container UUIDs, used as given: give each image its own
	// (VirtualBox refuses two disks with one UUID). Defaults to one derived
	// from the image's data, which costs a read of it.
	Seed string `mapstructure:"seed" required:"false"`
	// Unix time for the container's time stamps. Defaults to the
	// `SOURCE_DATE_EPOCH` environment variable, else 1.
	SourceDateEpoch *int64 `mapstructure:"source_date_epoch" required:"false"`

	spec      qemuimg.Spec
	epoch     int64
	seedGiven bool
	ctx       interpolate.Context
}

type PostProcessor struct {
	config Config
	driver qemuimg.Driver // qemu-img; Configure sets the real one unless a test gave a fake
}

var _ packersdk.PostProcessor = (*PostProcessor)(nil)

func (p *PostProcessor) ConfigSpec() hcldec.ObjectSpec { return p.config.FlatMapstructure().HCL2Spec() }

func (p *PostProcessor) Configure(raws ...interface{}) error {
	if p.driver == nil {
		p.driver = qemuimg.ExecDriver{}
	}
	c := &p.config
	if err := config.Decode(c, &config.DecodeOpts{
		PluginType:         "nixos-convert",
		Interpolate:        true,
		InterpolateContext: &c.ctx,
		InterpolateFilter:  &interpolate.RenderFilter{Exclude: []string{"output"}},
	}, raws...); err != nil {
		return err
	}
	var errs *packersdk.MultiError
	if c.Format == "" {
		errs = packersdk.MultiErrorAppend(errs, fmt.Errorf("format: required; allowed: %s", qemuimg.Names()))
	} else if spec, err := qemuimg.Parse(c.Format, c.Compression); err != nil {
		errs = packersdk.MultiErrorAppend(errs, qemuimg.Errors(err)...)
	} else {
		c.spec = spec
		for _, err := range diskout.CheckOVA(spec.Format, "output", "nixos", &c.OVACPUs, &c.OVAMemory, c.OVAFirmware) {
			errs = packersdk.MultiErrorAppend(errs, err)
		}
	}
	if c.Deterministic == nil {
		t := true
		c.Deterministic = &t
	}
	c.seedGiven = c.Seed != ""
	if !c.seedGiven {
		c.Seed = "packer-plugin-nixos"
	}
	epoch, err := normalize.Epoch(c.SourceDateEpoch)
	if err != nil {
		errs = packersdk.MultiErrorAppend(errs, err)
	}
	c.epoch = epoch
	if errs != nil && len(errs.Errors) > 0 {
		return errs
	}
	return nil
}

func (p *PostProcessor) PostProcess(ctx context.Context, ui packersdk.Ui, in packersdk.Artifact) (packersdk.Artifact, bool, bool, error) {
	c := &p.config
	disk, err := diskartifact.Find(in)
	if err != nil {
		return nil, false, false, fmt.Errorf("nixos-convert: %w", err)
	}
	out := c.Output
	if out == "" {
		out = filepath.Join(filepath.Dir(disk.Path), diskartifact.Stem(disk.Path)+"."+c.spec.Ext)
	}
	if same, _ := sameFile(out, disk.Path); same {
		return nil, false, false, fmt.Errorf("output: %s is the input image itself; give another output path", out)
	}
	if _, err := os.Lstat(out); err == nil && !c.PackerForce {
		return nil, false, false, fmt.Errorf("output: %s exists; remove it or use packer build -force", out)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, false, false, fmt.Errorf("output: %w", err)
	}

	// A seed the user gave is used as it is; the default one is made
	// unique to the image's content, so that two images never share
	// their UUIDs.
	seed := func() ([]byte, error) {
		if c.seedGiven {
			return []byte(c.Seed), nil
		}
		return normalize.ContentSeed(disk.Path, []byte(c.Seed))
	}
	machine := ova.Machine{Name: strings.TrimSuffix(diskartifact.Stem(out), ".tar"), CPUs: c.OVACPUs, MemoryMiB: c.OVAMemory, Firmware: c.OVAFirmware}
	if c.spec.Cloud == "ova" {
		if machine.Firmware == "" {
			layout, _ := disk.State.Generated["PartitionTableType"].(string)
			machine.Firmware = diskout.FirmwareFor(layout)
		}
		if err := machine.Validate(); err != nil {
			return nil, false, false, fmt.Errorf("output: the appliance is named after the file, %q: %w", machine.Name, err)
		}
	}
	ui.Say(fmt.Sprintf("Converting %s (%s) to %s: %s", disk.Path, disk.Format.Qemu, c.spec.Name, out))
	bar := uiprogress.New(ui, filepath.Base(out), 10000)
	err = diskout.Write(ctx, diskout.Job{
		Driver: p.driver, Spec: c.spec, Src: disk.Path, SrcFormat: disk.Format.Qemu, Final: out,
		Deterministic: *c.Deterministic, Seed: seed, Time: c.epoch, Machine: machine,
		Progress: bar.Percent, Say: ui.Message,
	})
	bar.Close()
	if err != nil {
		return nil, false, false, err
	}

	state := disk.State
	if state.DiskSize == "" && c.spec.FileType() != "" {
		info, err := p.driver.Info(ctx, out, c.spec.FileType())
		if err != nil {
			return nil, false, false, err
		}
		state.DiskSize = diskartifact.SizeString(info.VirtualSize)
	}
	if len(in.Files()) > 1 {
		ui.Say(fmt.Sprintf("The input artifact's other files (%q) stay with it; keep_input_artifact = true keeps them", others(in.Files(), disk.Path)))
	}
	return &diskartifact.Artifact{ID: BuilderID, Path: out, Format: c.spec.Format, Carry: state, Owned: true}, false, false, nil
}

func sameFile(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

func others(files []string, disk string) []string {
	var out []string
	for _, f := range files {
		if f != disk {
			out = append(out, f)
		}
	}
	return out
}
