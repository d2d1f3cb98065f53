package nixos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nix-community/go-nix/pkg/storepath"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/binarycache"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// CacheStore reads closures from binary caches instead of the host's Nix store
// ("store" when substituters are set): a ClosureReader and NARFetcher over a
// binarycache.Client. It needs neither Nix nor a /nix directory.
type CacheStore struct {
	Client *binarycache.Client

	mu    sync.Mutex
	infos []*binarycache.PathInfo
}

// NewCacheStore makes the CacheStore of a prepared Config (c.FromCache()),
// sending the client's retry notices to logf (which may be called from
// several goroutines at once).
func NewCacheStore(c *Config, logf func(format string, args ...any)) (*CacheStore, error) {
	cfg := c.cache
	cfg.Logf = logf
	client, err := binarycache.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("substituters: %w", err)
	}
	return &CacheStore{Client: client}, nil
}

// Check only checks that path is a store path in canonical form: whether a
// cache has it is found out by Closure.
func (s *CacheStore) Check(path string) error {
	sp, err := storepath.FromAbsolutePath(path)
	if err != nil {
		return fmt.Errorf("%q is not a store path: %w", path, err)
	}
	if sp.Absolute() != path {
		return fmt.Errorf("%q is not a store path in canonical form (%s)", path, sp.Absolute())
	}
	return nil
}

// Closure asks the caches: their store directories are checked, then every
// path's narinfo is fetched and checked (signatures, sizes), breadth first.
// The result is sorted as nixstore.Store.Closure sorts it, by path; the
// caches' own PathInfos, in the same order, are kept for CacheClosure.
func (s *CacheStore) Closure(ctx context.Context, roots []string) ([]nixstore.PathInfo, error) {
	if err := s.Client.CheckStoreDirs(ctx); err != nil {
		return nil, err
	}
	infos, err := s.Client.Closure(ctx, roots)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(infos, func(a, b *binarycache.PathInfo) int { return strings.Compare(a.Path, b.Path) })
	out := make([]nixstore.PathInfo, len(infos))
	for i, p := range infos {
		out[i] = p.NixstoreInfo()
	}
	s.mu.Lock()
	s.infos = infos
	s.mu.Unlock()
	return out, nil
}

// CacheClosure is the last Closure's PathInfos, in its order; stepClosure puts
// them in the state bag as "cache_closure".
func (s *CacheStore) CacheClosure() []*binarycache.PathInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.infos
}

// SpoolProgress downloads one NAR into dir (binarycache.Client.SpoolProgress).
func (s *CacheStore) SpoolProgress(ctx context.Context, p *binarycache.PathInfo, dir string, progress func(int64)) (*binarycache.Spooled, error) {
	return s.Client.SpoolProgress(ctx, p, dir, progress)
}
