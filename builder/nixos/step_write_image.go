package nixos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/hosttree"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/uiprogress"
)

// stepWriteImage writes the raw image: partition table, then the root
// filesystem streamed from the store. It writes into a hidden partial file,
// so an interrupted build never leaves something that looks like an image.
type stepWriteImage struct {
	partial string
}

func (s *stepWriteImage) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("plan").(*plan)
	closure := state.Get("closure").([]nixstore.PathInfo)
	start := time.Now()

	s.partial = filepath.Join(c.OutputDir, "."+c.ImageName+".raw.partial")
	f, err := p.layout.Create(s.partial)
	if err != nil {
		return halt(state, err)
	}
	defer f.Close()

	root := p.layout.Root()
	ui.Say(fmt.Sprintf("Writing the %s filesystem (%s at offset %d)...", c.FSType, humanBytes(p.fs.Size), root.Start))
	w, err := ext4.NewWriter(f, root.Start, p.fs)
	if err != nil {
		return halt(state, fmt.Errorf("writing the filesystem: %w", err))
	}
	bar := uiprogress.New(ui, "store", p.stats.Bytes+p.tree.ownBytes()).Lines(15*time.Second, func(done, total int64) string {
		return fmt.Sprintf("%s of %s written (%d%%)", humanBytes(done), humanBytes(total), done*100/max(total, 1))
	})
	stats, err := p.tree.walk(ctx, hosttree.Writer(w, bar.Add), w.SetRoot)
	bar.Close()
	if err != nil {
		return halt(state, fmt.Errorf("writing the filesystem: %w", err))
	}
	if stats != p.stats {
		return halt(state, fmt.Errorf("the store changed between measuring and writing (measured %+v, wrote %+v)", p.stats, stats))
	}
	if err := w.Close(); err != nil {
		return halt(state, fmt.Errorf("finishing the filesystem: %w", err))
	}
	if !c.OnlyNixStore {
		if err := formatFAT(f, p); err != nil {
			return halt(state, err)
		}
	}
	if err := f.Sync(); err != nil {
		return halt(state, fmt.Errorf("syncing the image: %w", err))
	}
	ui.Say(fmt.Sprintf("Wrote %d store paths: %d files, %d directories, %d symlinks, %d hard links, %s into a %s image in %s",
		len(closure), stats.Files, stats.Dirs, stats.Symlinks, stats.HardLinks, humanBytes(stats.Bytes),
		humanBytes(p.layout.DiskSize), time.Since(start).Round(time.Millisecond)))
	state.Put("raw_image", s.partial)
	return multistep.ActionContinue
}

func (s *stepWriteImage) Cleanup(state multistep.StateBag) {
	// The partial file is renamed away on success; anything left is debris.
	if s.partial != "" {
		os.Remove(s.partial)
	}
}
