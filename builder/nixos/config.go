//go:generate packer-sdc mapstructure-to-hcl2 -type Config
//go:generate packer-sdc struct-markdown

package nixos

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/common"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/diskout"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/binarycache"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// DefaultRootGUID is make-disk-image's rootGPUID and rootFSUID default.
const DefaultRootGUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"

// Config is the nixos-image builder's configuration.
type Config struct {
	common.PackerConfig `mapstructure:",squash"`

	// Build an image holding only the Nix store and its registration, with no
	// VM (make-disk-image's `onlyNixStore`). The filesystem's root is the store:
	// mount it on /nix/store. Defaults to `false`: install mode, a full NixOS
	// installation with its boot loader.
	OnlyNixStore bool `mapstructure:"only_nix_store" required:"false"`
	// Store paths whose closures go into a store-only image. Each must be a
	// valid path in the host's Nix store; the closure is computed from the Nix
	// database. In install mode use `system` and `additional_paths`.
	StorePaths []string `mapstructure:"store_paths" required:"false"`
	// A NixOS system: a `config.system.build.toplevel` store path. Install
	// mode installs it (one of `system`, `flake` or `nix_file` is required);
	// a store-only image adds it as one more root of the closure.
	System string `mapstructure:"system" required:"false"`
	// Install mode: a flake reference to a NixOS configuration, `path#name`,
	// built with `nix build` as
	// `path#nixosConfigurations.name.config.system.build.toplevel`.
	Flake string `mapstructure:"flake" required:"false"`
	// Install mode: a Nix file whose `attribute` evaluates to a system
	// toplevel, built with `nix-build <nix_file> -A <attribute>`.
	NixFile string `mapstructure:"nix_file" required:"false"`
	// The attribute of `nix_file` to build. Defaults to
	// `config.system.build.toplevel`.
	Attribute string `mapstructure:"attribute" required:"false"`
	// Install mode: a nixpkgs source directory (or store path) to install as
	// root's `nixos` channel, as make-disk-image's `copyChannel` does with the
	// nixpkgs it was built from. It is added to the store as
	// `<store>-nixos-channel/nixos` and becomes
	// /nix/var/nix/profiles/per-user/root/channels.
	Channel string `mapstructure:"channel" required:"false"`
	// Install mode: install `channel` (make-disk-image's `copyChannel`).
	// Defaults to `true` when `channel` is set; `true` without `channel` is
	// an error, since the plugin has no nixpkgs of its own.
	CopyChannel *bool `mapstructure:"copy_channel" required:"false"`
	// Install mode: install the system's boot loader as nixos-install does,
	// running `switch-to-configuration boot` with `NIXOS_INSTALL_BOOTLOADER=1`.
	// `false` is `nixos-install --no-bootloader`: the system is activated but
	// switch-to-configuration does not run, so the image has no boot loader
	// and no boot entries (boot it with its kernel and initrd, or install one
	// later). Defaults to `true`.
	InstallBootloader *bool `mapstructure:"install_bootloader" required:"false"`
	// Install mode: memory of the installer VM in MiB. It activates the system
	// and installs the boot loader only: no closure byte passes through it, so
	// it need not grow with the image. Defaults to `256`.
	MemSize int `mapstructure:"mem_size" required:"false"`
	// Install mode: `auto`, `kvm` or `tcg`. `auto` uses KVM only if
	// /dev/kvm is usable, runs a tiny guest loop within a quarter of a
	// second (a nested or emulated KVM that runs guests slower than TCG
	// fails this at once), and the guest agent then answers within
	// `kvm_probe_timeout`; else it goes on under TCG. Defaults to `auto`.
	Accelerator string `mapstructure:"accelerator" required:"false"`
	// Install mode: how long `auto` waits for the guest under KVM before
	// falling back to TCG. Defaults to `20s`.
	KVMProbeTimeout time.Duration `mapstructure:"kvm_probe_timeout" required:"false"`
	// Install mode: how long the installer VM may take, from boot to power
	// off, under KVM; under TCG, which emulates every instruction, it gets
	// five times as long. Defaults to `10m`.
	InstallTimeout time.Duration `mapstructure:"install_timeout" required:"false"`
	// Install mode: the QEMU system emulator. Defaults to the one for the
	// system's architecture (its `system` file, never the host's):
	// `qemu-system-x86_64`, or `qemu-system-aarch64` for `aarch64-linux`
	// systems, which run under TCG on other hosts.
	QemuBinary string `mapstructure:"qemu_binary" required:"false"`
	// Install mode: a kernel (bzImage) to boot the installer VM with, instead
	// of the system's own `kernel`.
	InstallerKernel string `mapstructure:"installer_kernel" required:"false"`
	// Install mode: the modules of `installer_kernel`: a
	// `lib/modules/<version>` directory, or a directory holding one
	// (a kernel-modules store path). Defaults to the system's.
	InstallerModules string `mapstructure:"installer_modules" required:"false"`
	// Install mode, GPT layouts only: boot the installer VM with OVMF and a
	// writable copy of its variable store, so the boot loader installation
	// can register its boot entry; the variables are kept as `efi-vars.fd`
	// in the output directory (make-disk-image's `touchEFIVars`).
	TouchEFIVars bool `mapstructure:"touch_efi_vars" required:"false"`
	// The UEFI firmware code for `touch_efi_vars`, attached read-only.
	// Defaults to Debian's /usr/share/OVMF (package ovmf), or for
	// `aarch64-linux` systems /usr/share/AAVMF (package qemu-efi-aarch64).
	EFIFirmwareCode string `mapstructure:"efi_firmware_code" required:"false"`
	// The OVMF variable store template for `touch_efi_vars`; a copy is used.
	// Defaults to the one that goes with `efi_firmware_code`.
	EFIFirmwareVars string `mapstructure:"efi_firmware_vars" required:"false"`
	// More store paths to include and register (make-disk-image's
	// `additionalPaths`).
	AdditionalPaths []string `mapstructure:"additional_paths" required:"false"`
	// Binary caches to read the closure from instead of the host's Nix
	// store, as nix.conf's `substituters`: `https://`, `http://` or `file://`
	// URLs (such as `https://cache.nixos.org`, or a directory written by
	// `nix copy --to file:///srv/cache`), tried in order for each store path.
	// When set, the paths named by `store_paths`, `system` and
	// `additional_paths` need not be on this machine and Nix need not be
	// installed: each path's narinfo is fetched and its signature checked,
	// and its NAR downloaded to a temporary directory, verified, and written
	// into the image (see "Building from a binary cache").
	Substituters []string `mapstructure:"substituters" required:"false"`
	// The keys whose signatures on the substituters' narinfo files are
	// trusted, as nix.conf's `trusted-public-keys`: `name:base64`, as
	// `nix-store --generate-binary-cache-key` writes them (for example
	// `cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=`).
	// Only with `substituters`.
	TrustedPublicKeys []string `mapstructure:"trusted_public_keys" required:"false"`
	// Refuse store paths whose narinfo has no valid signature from one of
	// `trusted_public_keys`, as nix.conf's `require-sigs`. With `false`,
	// unsigned paths are accepted (their NARs are still checked against the
	// narinfo's hashes). Only with `substituters`. Defaults to `true`.
	RequireSigs *bool `mapstructure:"require_sigs" required:"false"`
	// Credentials for private caches, as nix.conf's `netrc-file`: a netrc
	// file of `machine HOST login USER password PASS` entries, each sent as
	// HTTP Basic authentication to its HOST only (a `default` entry is
	// ignored). Credentials are never logged. Only with `substituters`.
	NetrcFile string `mapstructure:"netrc_file" required:"false"`
	// Seconds a download from `substituters` may go without receiving a
	// byte (the response's headers too) before the try is given up, as
	// nix.conf's `stalled-download-timeout`. Only with `substituters`.
	// Defaults to `60`.
	StalledDownloadTimeout int `mapstructure:"stalled_download_timeout" required:"false"`
	// How many times each narinfo and NAR download is tried before the
	// build stops (transient failures only: timeouts, stalls, resets, 5xx,
	// 429, truncated bodies), with a doubling pause between tries, as
	// nix.conf's `download-attempts`. Only with `substituters`. Defaults
	// to `5`.
	DownloadAttempts int `mapstructure:"download_attempts" required:"false"`
	// Disk size: `auto` (computed exactly from the closure, plus
	// `additional_space`), or a size such as `8G`, `512M`, `1T`; a bare number
	// is MiB, as in make-disk-image. Defaults to `auto`.
	DiskSize string `mapstructure:"disk_size" required:"false"`
	// Free space added on top of the computed size when `disk_size = "auto"`.
	// Defaults to `512M`.
	AdditionalSpace string `mapstructure:"additional_space" required:"false"`
	// Size of the EFI system partition for the `efi`, `efixbootldr` and
	// `hybrid` layouts. Defaults to `256M`.
	BootSize string `mapstructure:"boot_size" required:"false"`
	// Partition layout: `legacy` (MBR), `legacy+gpt` (GPT with a BIOS boot
	// partition), `efi` (GPT with an ESP), `efixbootldr` (ESP and XBOOTLDR),
	// `hybrid` (GPT, ESP, BIOS boot and a hybrid MBR) or `none` (a bare
	// filesystem). Defaults to `legacy`.
	PartitionTableType string `mapstructure:"partition_table_type" required:"false"`
	// With `partition_table_type = "hybrid"`, write a hybrid MBR (as
	// `sgdisk --hybrid` does: the ESP and root partitions mirrored in the
	// MBR beside the 0xEE entry) for firmware that boots only from MBR
	// tables. Defaults to `false`: a protective MBR, as make-disk-image
	// leaves it.
	HybridMBR bool `mapstructure:"hybrid_mbr" required:"false"`
	// Root filesystem type. Only `ext4` is supported for now.
	FSType string `mapstructure:"fs_type" required:"false"`
	// Root filesystem label. Defaults to `nix-store` when `only_nix_store`,
	// else `nixos`.
	Label string `mapstructure:"label" required:"false"`
	// The root filesystem's UUID. Defaults to
	// `F222513B-DED1-49FA-B591-20CE86A2FE7F` when `deterministic`, else random.
	RootFSUUID string `mapstructure:"root_fs_uuid" required:"false"`
	// The root partition's unique GUID (GPT layouts). Defaults to
	// `F222513B-DED1-49FA-B591-20CE86A2FE7F` when `deterministic`, else random.
	RootPartitionGUID string `mapstructure:"root_partition_guid" required:"false"`
	// Make the image bit-for-bit reproducible: fixed UUIDs and GUIDs, the
	// ext4 hash seed derived from the UUID, every time from
	// `source_date_epoch`. Defaults to `true`.
	Deterministic *bool `mapstructure:"deterministic" required:"false"`
	// Unix time written for the filesystem and every file we create. Defaults
	// to the `SOURCE_DATE_EPOCH` environment variable, else 1 (the Nix store's
	// own time stamp).
	SourceDateEpoch *int64 `mapstructure:"source_date_epoch" required:"false"`
	// Output format: `raw` (file `<image_name>.img`), `qcow2`,
	// `qcow2-compressed`, `vdi`, `vpc` (`.vhd`), `vhdx`, `vmdk`,
	// `vmdk-stream` (stream-optimised `.vmdk`, for AWS import-snapshot and
	// VMware), or a cloud's import format: `azure` (fixed `.vhd` of whole
	// MiB), `gce` (`.tar.gz` holding a sparse `disk.raw`) or `ova` (VMware
	// and VirtualBox appliance). Converted as the `nixos-convert`
	// post-processor does. Defaults to `raw`.
	Format string `mapstructure:"format" required:"false"`
	// qcow2 compression: `zlib` or `zstd` (implies `qcow2-compressed`).
	// Defaults to zlib for `qcow2-compressed`.
	Compression string `mapstructure:"compression" required:"false"`
	// With `format = "ova"`: the appliance's virtual CPUs. Defaults to 2.
	OVACPUs int `mapstructure:"ova_cpus" required:"false"`
	// With `format = "ova"`: the appliance's memory in MiB. Defaults to 2048.
	OVAMemory int `mapstructure:"ova_memory" required:"false"`
	// With `format = "ova"`: `bios` or `efi`, the firmware the appliance
	// boots with. Defaults to `efi` for the `efi` and `efixbootldr`
	// layouts, else `bios`.
	OVAFirmware string `mapstructure:"ova_firmware" required:"false"`
	// Base name of the image file. Defaults to `nixos`.
	ImageName string `mapstructure:"image_name" required:"false"`
	// Directory for the image. Defaults to `output-<build name>`. It must not
	// exist, unless `packer build -force` is used (which deletes it first).
	OutputDir string `mapstructure:"output_directory" required:"false"`

	ctx interpolate.Context

	// Parsed forms, filled by Prepare.
	diskSizeBytes   int64 // 0 = auto
	format          qemuimg.Spec
	additionalBytes int64
	bootBytes       int64
	layout          disk.Type
	efiDefaulted    bool // touch_efi_vars without firmware paths: the system's architecture's
	epoch           int64
	cache           binarycache.Config // substituters set: what New gets
}

// Prepare decodes and validates the configuration. Every problem is reported
// at once, each naming its key and what is allowed.
func (c *Config) Prepare(raws ...interface{}) ([]string, error) {
	if err := config.Decode(c, &config.DecodeOpts{
		PluginType:         BuilderID,
		Interpolate:        true,
		InterpolateContext: &c.ctx,
	}, raws...); err != nil {
		return nil, err
	}
	var errs *packersdk.MultiError
	bad := func(format string, a ...interface{}) {
		errs = packersdk.MultiErrorAppend(errs, fmt.Errorf(format, a...))
	}

	for key, paths := range map[string][]string{"store_paths": c.StorePaths, "additional_paths": c.AdditionalPaths, "system": nonEmpty(c.System)} {
		for _, p := range paths {
			if !strings.HasPrefix(p, "/nix/store/") || strings.Count(strings.TrimPrefix(p, "/nix/store/"), "/") > 0 || len(p) <= len("/nix/store/") {
				bad("%s: %q is not a store path; want /nix/store/<hash>-<name>", key, p)
			}
		}
	}

	var err error
	if c.DiskSize == "" {
		c.DiskSize = "auto"
	}
	if c.DiskSize != "auto" {
		if c.diskSizeBytes, err = ParseSize(c.DiskSize); err != nil || c.diskSizeBytes <= 0 {
			bad("disk_size: %q is not \"auto\" or a size such as 8G, 512M or 2048 (MiB)", c.DiskSize)
		}
	}
	if c.AdditionalSpace == "" {
		c.AdditionalSpace = "512M"
	}
	if c.additionalBytes, err = ParseSize(c.AdditionalSpace); err != nil || c.additionalBytes < 0 {
		bad("additional_space: %q is not a size such as 512M, 1G or 0", c.AdditionalSpace)
	}
	if c.BootSize == "" {
		c.BootSize = "256M"
	}
	if c.bootBytes, err = ParseSize(c.BootSize); err != nil || c.bootBytes < 1<<20 {
		bad("boot_size: %q is not a size of at least 1M, such as 256M or 1G", c.BootSize)
	}
	if c.PartitionTableType == "" {
		c.PartitionTableType = "legacy"
	}
	if c.layout, err = disk.ParseType(c.PartitionTableType); err != nil {
		bad("partition_table_type: %s", err)
	}
	if c.HybridMBR && c.layout != disk.Hybrid {
		bad("hybrid_mbr: only allowed with partition_table_type = \"hybrid\", not %q", c.PartitionTableType)
	}
	if c.FSType == "" {
		c.FSType = "ext4"
	}
	if c.FSType != "ext4" {
		bad("fs_type: %q is not supported; allowed: ext4", c.FSType)
	}
	if c.Label == "" {
		c.Label = "nixos"
		if c.OnlyNixStore {
			c.Label = "nix-store"
		}
	}
	if len(c.Label) > 16 {
		bad("label: %q is %d bytes long; an ext4 label holds at most 16", c.Label, len(c.Label))
	}
	if c.Deterministic == nil {
		t := true
		c.Deterministic = &t
	}
	if *c.Deterministic {
		if c.RootFSUUID == "" {
			c.RootFSUUID = DefaultRootGUID
		}
		if c.RootPartitionGUID == "" {
			c.RootPartitionGUID = DefaultRootGUID
		}
	}
	if c.RootFSUUID != "" {
		if _, err := ParseUUID(c.RootFSUUID); err != nil {
			bad("root_fs_uuid: %q is not a UUID like %s", c.RootFSUUID, DefaultRootGUID)
		}
	}
	if c.RootPartitionGUID != "" {
		if _, err := ParseUUID(c.RootPartitionGUID); err != nil {
			bad("root_partition_guid: %q is not a GUID like %s", c.RootPartitionGUID, DefaultRootGUID)
		}
	}
	if c.epoch, err = normalize.Epoch(c.SourceDateEpoch); err != nil {
		bad("%v", err)
	}
	if c.Format == "" {
		c.Format = "raw"
	}
	if spec, err := qemuimg.Parse(c.Format, c.Compression); err != nil {
		for _, e := range qemuimg.Errors(err) {
			bad("%v", e)
		}
	} else {
		c.format = spec
	}
	if c.ImageName == "" {
		c.ImageName = "nixos"
	}
	if strings.ContainsAny(c.ImageName, "/\x00") || c.ImageName == "." || c.ImageName == ".." {
		bad("image_name: %q must be a plain file name without '/'", c.ImageName)
	}
	for _, e := range diskout.CheckOVA(c.format.Format, "image_name", c.ImageName, &c.OVACPUs, &c.OVAMemory, c.OVAFirmware) {
		bad("%v", e)
	}
	if c.OVAFirmware == "" && c.format.Cloud == "ova" {
		c.OVAFirmware = diskout.FirmwareFor(string(c.layout))
	}
	if c.OutputDir == "" {
		c.OutputDir = "output-" + c.PackerBuildName
	}
	c.prepareCache(bad)

	if c.OnlyNixStore {
		if len(c.StorePaths) == 0 && c.System == "" && len(c.AdditionalPaths) == 0 {
			bad("store_paths: at least one of store_paths, system or additional_paths must name a store path")
		}
		for key, set := range map[string]bool{"flake": c.Flake != "", "nix_file": c.NixFile != "", "attribute": c.Attribute != "",
			"install_bootloader": c.InstallBootloader != nil, "mem_size": c.MemSize != 0, "accelerator": c.Accelerator != "",
			"kvm_probe_timeout": c.KVMProbeTimeout != 0, "install_timeout": c.InstallTimeout != 0, "qemu_binary": c.QemuBinary != "",
			"touch_efi_vars": c.TouchEFIVars, "efi_firmware_code": c.EFIFirmwareCode != "", "efi_firmware_vars": c.EFIFirmwareVars != "",
			"installer_kernel": c.InstallerKernel != "", "installer_modules": c.InstallerModules != "",
			"channel": c.Channel != "", "copy_channel": c.CopyChannel != nil} {
			if set {
				bad("%s: only for install mode; a store-only image (only_nix_store = true) has no system to install", key)
			}
		}
	} else {
		c.prepareInstall(bad)
	}
	if errs != nil && len(errs.Errors) > 0 {
		return nil, errs
	}
	return nil, nil
}

// ImageFile is the file name of the finished image.
func (c *Config) ImageFile() string { return c.ImageName + "." + c.format.Ext }

// Roots are all the store paths whose closures the image holds.
func (c *Config) Roots() []string {
	roots := append([]string{}, c.StorePaths...)
	roots = append(roots, nonEmpty(c.System)...)
	return append(roots, c.AdditionalPaths...)
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// ParseSize reads a size as make-disk-image and Packer users write it: a
// bare number is MiB; K, M, G, T suffixes (optionally followed by "iB" or
// "B") are powers of 1024.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	mult := int64(1 << 20)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K', 'k':
			mult, t = 1<<10, t[:n-1]
		case 'M', 'm':
			mult, t = 1<<20, t[:n-1]
		case 'G', 'g':
			mult, t = 1<<30, t[:n-1]
		case 'T', 't':
			mult, t = 1<<40, t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 {
		return 0, errors.New("not a size")
	}
	if v > (1<<62)/mult {
		return 0, errors.New("too large")
	}
	return v * mult, nil
}
