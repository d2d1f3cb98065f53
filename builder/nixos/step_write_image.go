package nixos

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/fat"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/hosttree"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
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
	bar := newProgress(ui, "store", p.stats.Bytes+p.tree.ownBytes())
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

// formatFAT makes empty FAT32 filesystems on the ESP (label ESP) and
// XBOOTLDR (label BOOT) partitions, as make-disk-image's mkfs.vfat calls do;
// the boot loader installation fills them. Volume IDs come from the seed.
func formatFAT(f *os.File, p *plan) error {
	for _, part := range []struct {
		role  disk.Role
		label string
	}{{disk.RoleESP, "ESP"}, {disk.RoleXBootLdr, "BOOT"}} {
		pt, ok := p.layout.Find(part.role)
		if !ok {
			continue
		}
		sum := sha256.Sum256(append([]byte("fat volume id\x00"+part.label+"\x00"), p.seed...))
		w, err := fat.NewWriter(f, pt.Start, fat.Options{Size: pt.Size, Label: part.label,
			VolumeID: binary.LittleEndian.Uint32(sum[:4]), Time: p.epoch})
		if err == nil {
			err = w.Close()
		}
		if err != nil {
			return fmt.Errorf("formatting the %s partition: %w", part.label, err)
		}
	}
	return nil
}

func (s *stepWriteImage) Cleanup(state multistep.StateBag) {
	// The partial file is renamed away on success; anything left is debris.
	if s.partial != "" {
		os.Remove(s.partial)
	}
}

// progress drives Packer's progress bar from byte counts: the bar wraps a
// reader, so it is fed by reading the counted number of bytes through it.
type progress struct {
	src     *countSource
	tracked io.ReadCloser
	buf     []byte

	// Packer draws the bar only on a terminal; CI logs get a line now and then.
	ui          packersdk.Ui
	done, total int64
	lastLine    time.Time
}

type countSource struct{ pending int64 }

func (c *countSource) Read(p []byte) (int, error) {
	if c.pending == 0 {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > c.pending {
		n = c.pending
	}
	c.pending -= n
	return int(n), nil
}

func newProgress(ui packersdk.Ui, name string, total int64) *progress {
	src := &countSource{}
	return &progress{src: src, tracked: ui.TrackProgress(name, 0, total, io.NopCloser(src)), buf: make([]byte, 32<<10),
		ui: ui, total: total, lastLine: time.Now()}
}

const progressLineEvery = 15 * time.Second

func (p *progress) Add(n int64) {
	p.done += n
	if time.Since(p.lastLine) >= progressLineEvery {
		p.lastLine = time.Now()
		p.ui.Message(fmt.Sprintf("%s of %s written (%d%%)", humanBytes(p.done), humanBytes(p.total), p.done*100/max(p.total, 1)))
	}
	p.src.pending += n
	for p.src.pending > 0 {
		if _, err := p.tracked.Read(p.buf); err != nil {
			return
		}
	}
}

func (p *progress) Close() { p.tracked.Close() }
