package nixos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/binarycache"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/uiprogress"
)

const (
	// fetchParallel NARs are downloaded at once.
	fetchParallel = 4
	// spoolSlack is added per NAR to the spool's size for the free-space
	// check: each file's last block, rounded up.
	spoolSlack = 4096
)

// stepFetch (only with substituters) downloads the NAR of every path in the closure from the binary
// caches ("store": a NARFetcher, "cache_closure") into a new directory under
// TMPDIR, decompressed as it arrives and checked against its FileHash,
// FileSize, NarHash and NarSize: the walks (file sizes, sizing, writing)
// then read plain files from there, so each NAR is downloaded, decompressed
// and hashed once. The cost is the NARs' unpacked size on disk, not their
// compressed size. It puts the []*binarycache.Spooled in the state bag as
// "nars", in closure order. Cleanup removes the directory.
type stepFetch struct {
	parallel  int                              // downloads at once; 0 = fetchParallel
	freeSpace func(dir string) (uint64, error) // nil = statfs(2)

	dir string
}

func (s *stepFetch) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	if !state.Get("config").(*Config).FromCache() {
		return multistep.ActionContinue // the closure is in the host's store
	}
	ui := state.Get("ui").(packersdk.Ui)
	fetcher := state.Get("store").(NARFetcher)
	infos := state.Get("cache_closure").([]*binarycache.PathInfo)
	fileTotal, narTotal := binarycache.TotalSizes(infos)
	start := time.Now()

	dir, err := os.MkdirTemp("", "packer-nixos-nars-*")
	if err != nil {
		return halt(state, fmt.Errorf("creating the NAR spool directory under %s (set TMPDIR to choose another place): %w", os.TempDir(), err))
	}
	s.dir = dir
	need := narTotal + uint64(len(infos))*spoolSlack
	ui.Say(fmt.Sprintf("Downloading %d NARs: %s compressed, %s unpacked; they are kept unpacked in %s until the image is written, which needs %s free there",
		len(infos), humanBytes(int64(fileTotal)), humanBytes(int64(narTotal)), dir, humanBytes(int64(need))))
	free := s.freeSpace
	if free == nil {
		free = statfsFree
	}
	avail, err := free(dir)
	if err != nil {
		return halt(state, fmt.Errorf("checking the free space in %s: %w", dir, err))
	}
	if avail < need {
		return halt(state, fmt.Errorf("not enough space for the NARs in %s: %s needed, %s free; set TMPDIR to a directory with more room",
			dir, humanBytes(int64(need)), humanBytes(int64(avail))))
	}
	if isTmpfs(dir) {
		ui.Message(fmt.Sprintf("%s is on a tmpfs: the NARs will take %s of memory until the image is written (set TMPDIR to a directory on disk to avoid it)",
			dir, humanBytes(int64(narTotal))))
	}

	bar := uiprogress.New(ui, "NARs", int64(fileTotal)).Lines(15*time.Second, func(done, total int64) string {
		return fmt.Sprintf("%s of %s downloaded (%d%%)", humanBytes(done), humanBytes(total), done*100/max(total, 1))
	})
	progress := &netProgress{add: bar.Add}
	nars := make([]*binarycache.Spooled, len(infos))
	g, gctx := errgroup.WithContext(ctx)
	parallel := s.parallel
	if parallel <= 0 {
		parallel = fetchParallel
	}
	g.SetLimit(parallel)
	for i, p := range infos {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			sp, err := fetcher.SpoolProgress(gctx, p, dir, progress.Add)
			if err != nil {
				// The first error cancels the others (theirs are not reported).
				return fetchError(p, err)
			}
			nars[i] = sp
			return nil
		})
	}
	err = g.Wait()
	bar.Close()
	if err == nil && slices.Contains(nars, nil) {
		// Cancelled between two downloads: the loop stopped starting them.
		err = errors.New("not every NAR was downloaded")
	}
	if err != nil {
		os.RemoveAll(dir)
		if ctx.Err() != nil {
			return halt(state, fmt.Errorf("downloading the NARs: %w", context.Cause(ctx)))
		}
		return halt(state, fmt.Errorf("downloading the NARs: %w", err))
	}
	var got, unpacked int64
	for _, n := range nars {
		got += n.Downloaded()
		unpacked += n.Size()
	}
	ui.Say(fmt.Sprintf("Downloaded %d NARs, %s (%s unpacked), in %s", len(nars), humanBytes(got), humanBytes(unpacked), time.Since(start).Round(time.Millisecond)))
	state.Put("nars", nars)
	return multistep.ActionContinue
}

// fetchError names the store path and the URL: a hash or size mismatch
// names both already (and the URL once is enough), the rest the URL.
func fetchError(p *binarycache.PathInfo, err error) error {
	var m *binarycache.MismatchError
	if errors.As(err, &m) {
		return m
	}
	if strings.Contains(err.Error(), p.Path) {
		return err
	}
	return fmt.Errorf("%s: %w", p.Path, err)
}

// Cleanup removes the spooled NARs, whether the build succeeded or not.
func (s *stepFetch) Cleanup(multistep.StateBag) {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// statfsFree is the space an unprivileged user may still use in dir's
// filesystem.
func statfsFree(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// isTmpfs says whether dir is on a tmpfs, whose files take memory.
func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

// netProgress turns SpoolProgress's counts, negative when a retry starts a
// download over, into a bar that never counts a byte twice nor goes back:
// it advances only past the highest net count yet.
type netProgress struct {
	net, high atomic.Int64
	add       func(int64)
}

func (p *netProgress) Add(n int64) {
	v := p.net.Add(n)
	for {
		h := p.high.Load()
		if v <= h {
			return
		}
		if p.high.CompareAndSwap(h, v) {
			p.add(v - h)
			return
		}
	}
}

// closureStore is the "store" the closure is read from: the binary caches
// when substituters are set, whose retry notices go to the UI, else the
// host's Nix store.
func closureStore(c *Config, ui packersdk.Ui) (ClosureReader, error) {
	if !c.FromCache() {
		return &nixstore.Store{Dir: "/nix/store"}, nil
	}
	var mu sync.Mutex
	cs, err := NewCacheStore(c, func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		ui.Message(fmt.Sprintf(format, args...))
	})
	if err != nil {
		return nil, err
	}
	return cs, nil
}
