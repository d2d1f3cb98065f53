package nixos

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/hosttree"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/binarycache"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// plan is everything stepWriteImage needs to know before writing a byte.
type plan struct {
	layout *disk.Layout
	fs     ext4.Options
	tree   tree
	stats  hosttree.Stats // what the sizing walk saw; the write walk must see the same
	epoch  int64
	seed   []byte // for the FAT volume IDs
}

// stepPlan measures the closure with the same walk that will write it, then
// lays out the disk. A fixed disk_size that cannot hold the closure fails
// here, naming the size needed, before the image file exists.
type stepPlan struct{}

func (s *stepPlan) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	closure := state.Get("closure").([]nixstore.PathInfo)

	epoch := c.epoch
	if !*c.Deterministic {
		epoch = time.Now().Unix()
	}
	base := treeBase{closure: closure, root: ext4.Header{Mode: 0o755, Mtime: epoch}}
	if nars, ok := state.GetOk("nars"); ok {
		// From binary caches: each path is read from its spooled NAR,
		// decompressed and checked against its narinfo on every read.
		for _, n := range nars.([]*binarycache.Spooled) {
			base.nars = append(base.nars, n.Open)
		}
	}
	owner := [2]uint32{0, 0} // the store is root's whatever the host's numbering
	base.opts = hosttree.Options{Owner: &owner}
	if *c.Deterministic {
		base.opts.MaxMtime = &epoch
	}
	p := &plan{epoch: epoch}
	if c.OnlyNixStore {
		var reg bytes.Buffer
		if err := nixstore.WriteRegistration(&reg, closure); err != nil {
			return halt(state, err)
		}
		st := &storeTree{treeBase: base, registration: reg.Bytes()}
		if comm, ok := state.GetOk("store_comm"); ok {
			st.uploads = comm.(*storeComm).dir
			st.uploadOwner = comm.(*storeComm).ownerOf
			if err := checkUploads(st.uploads, closure); err != nil {
				return halt(state, err)
			}
		}
		p.tree = st
	} else {
		var dirs []string // where the installer will mount the boot partitions
		if system, ok := state.GetOk("system"); ok {
			for _, m := range system.(*toplevel).bootMounts(c.layout) {
				dirs = append(dirs, m.dir)
			}
		}
		p.tree = &installTree{treeBase: base, stateDir: state.Get("nix_state_dir").(string),
			mountDirs: dirs, ownerNixbld: nixbldGID, channel: *c.CopyChannel}
	}

	ui.Say("Measuring the closure...")
	sizer := ext4.NewSizer()
	stats, err := p.tree.walk(ctx, hosttree.Sizer(sizer), sizer.SetRoot)
	if err != nil {
		return halt(state, fmt.Errorf("measuring the closure: %w", err))
	}
	p.stats = stats

	minSize, minInodes := sizer.Plan(0)
	fsSize, inodes := minSize, minInodes
	if c.diskSizeBytes == 0 {
		fsSize, inodes = sizer.Plan(c.additionalBytes)
	}

	uuid, err := fsUUID(c)
	if err != nil {
		return halt(state, err)
	}
	opts := disk.Options{
		Type:      c.layout,
		RootSize:  fsSize,
		DiskSize:  c.diskSizeBytes,
		RootGUID:  c.RootPartitionGUID,
		HybridMBR: c.HybridMBR,
		Seed:      []byte("packer-plugin-nixos\x00" + c.RootPartitionGUID + "\x00" + c.RootFSUUID),
	}
	if c.layout.HasBootSize() {
		opts.BootSize = c.bootBytes
	}
	if !*c.Deterministic {
		opts.Seed = make([]byte, 32)
		rand.Read(opts.Seed)
	}
	p.seed = opts.Seed
	if c.diskSizeBytes != 0 {
		// Say what the closure needs, rather than what the layout lacks.
		opts.RootSize, opts.DiskSize = minSize, 0
		need, err := disk.Plan(opts)
		if err != nil {
			return halt(state, fmt.Errorf("partition_table_type: %w", err))
		}
		if need.DiskSize > c.diskSizeBytes {
			mib := (need.DiskSize + 1<<20 - 1) >> 20
			return halt(state, fmt.Errorf("disk_size: %s is too small for this closure: the image needs at least %d MiB (%d bytes); use disk_size = \"auto\" or at least \"%dM\"",
				c.DiskSize, mib, need.DiskSize, mib))
		}
		opts.DiskSize = c.diskSizeBytes
	}
	layout, err := disk.Plan(opts)
	if err != nil {
		return halt(state, fmt.Errorf("disk_size: %w", err))
	}
	if c.diskSizeBytes != 0 {
		// The root partition takes the rest of a fixed disk; give the spare
		// room inodes as auto-sizing would, if they still fit.
		fsSize = layout.Root().Size &^ 4095
		if sz, n := sizer.Plan(fsSize - minSize); sz <= fsSize {
			inodes = n
		}
	}
	p.layout = layout
	p.fs = ext4.Options{
		Size:     fsSize,
		Label:    c.Label,
		UUID:     uuid,
		HashSeed: hashSeed(uuid),
		Time:     epoch,
		Inodes:   inodes,
	}
	if !*c.Deterministic {
		rand.Read(p.fs.HashSeed[:])
	}
	ui.Say(fmt.Sprintf("Image: %s, %s layout, %s %s filesystem with %d inodes (closure: %d files, %d directories, %d symlinks, %d hard links, %s)",
		humanBytes(layout.DiskSize), c.PartitionTableType, humanBytes(fsSize), c.FSType, inodes,
		stats.Files, stats.Dirs, stats.Symlinks, stats.HardLinks, humanBytes(stats.Bytes)))
	state.Put("plan", p)
	return multistep.ActionContinue
}

func (s *stepPlan) Cleanup(multistep.StateBag) {}
