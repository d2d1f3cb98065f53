package binarycache

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// CheckStoreDirs reads every substituter's nix-cache-info and refuses one whose StoreDir
// is not /nix/store (its paths could not be used in this store). A cache with no
// nix-cache-info is accepted, as Nix accepts it.
func (c *Client) CheckStoreDirs(ctx context.Context) error {
	for _, s := range c.subs {
		body, err := c.readSmall(ctx, s, "nix-cache-info", 64<<10)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(bytes.NewReader(body))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && strings.TrimSpace(k) == "StoreDir" && strings.TrimSpace(v) != StoreDir {
				return fmt.Errorf("%s: StoreDir is %q, not %s", s.display("nix-cache-info"), strings.TrimSpace(v), StoreDir)
			}
		}
	}
	return nil
}

// Closure returns the checked PathInfo of every path in the closure of roots (full store
// paths), sorted by path. Narinfo files are fetched breadth first, each once, up to
// Config.Parallel at a time; the first error cancels the rest. The closure is bounded by
// MaxClosurePaths and MaxClosureInfoBytes.
func (c *Client) Closure(ctx context.Context, roots []string) ([]*PathInfo, error) {
	if len(roots) == 0 {
		return nil, errors.New("closure: no root store paths given")
	}
	seen := map[string]bool{}
	var frontier []string
	for _, r := range roots {
		if _, err := hashPart(r); err != nil {
			return nil, err
		}
		if !seen[r] {
			seen[r] = true
			frontier = append(frontier, r)
		}
	}
	var all []*PathInfo
	var infoBytes int64
	for len(frontier) > 0 {
		slices.Sort(frontier)
		level := make([]*PathInfo, len(frontier))
		var mu sync.Mutex
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(c.parallel)
		for i, p := range frontier {
			g.Go(func() error {
				info, n, err := c.pathInfo(gctx, p)
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				infoBytes += int64(n)
				if infoBytes > MaxClosureInfoBytes {
					return fmt.Errorf("closure: narinfo files exceed %d bytes in total", MaxClosureInfoBytes)
				}
				level[i] = info
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("closure: %w", context.Cause(ctx))
			}
			return nil, fmt.Errorf("closure: %w", err)
		}
		frontier = frontier[:0:0]
		for _, info := range level {
			all = append(all, info)
			for _, r := range info.References {
				if !seen[r] {
					seen[r] = true
					frontier = append(frontier, r)
				}
			}
		}
		if len(seen) > MaxClosurePaths {
			return nil, fmt.Errorf("closure: more than %d store paths", MaxClosurePaths)
		}
	}
	slices.SortFunc(all, func(a, b *PathInfo) int { return strings.Compare(a.Path, b.Path) })
	return all, nil
}

// WriteRegistration writes the registration of infos (`nix-store --load-db` input):
// byte for byte what `nix-store --dump-db` prints for the same paths, sorted by path,
// as nixstore.WriteRegistration writes it for a local store.
func WriteRegistration(w io.Writer, infos []*PathInfo) error {
	conv := make([]nixstore.PathInfo, len(infos))
	for i, p := range infos {
		conv[i] = p.NixstoreInfo()
	}
	return nixstore.WriteRegistration(w, conv)
}

// TotalSizes sums the compressed (FileSize, or NarSize when the cache gives none) and NAR
// sizes of infos: what is downloaded, and what the spool directory holds.
func TotalSizes(infos []*PathInfo) (file, nar uint64) {
	for _, p := range infos {
		f := p.FileSize
		if f == 0 {
			f = p.NarSize
		}
		file += f // each ≤ maxNarSize, ≤ MaxClosurePaths paths: no overflow
		nar += p.NarSize
	}
	return file, nar
}
