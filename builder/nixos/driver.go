package nixos

import (
	"context"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/binarycache"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// The steps reach every host program through these interfaces, which
// Builder.Run fills the state bag with (key in brackets) and the step tests
// fake. qemu-img ("qemu-img") and QEMU ("qemu") have theirs in
// internal/qemuimg and internal/vm/qemu.

// NixBuilder builds the system to install from a flake or a Nix file
// ("nix"; NixDriver).
type NixBuilder interface {
	// BuildFlake builds ref#nixosConfigurations.name.config.system.build.toplevel.
	BuildFlake(ctx context.Context, ref, name string) (string, error)
	// BuildFile builds attribute attr of the Nix file.
	BuildFile(ctx context.Context, file, attr string) (string, error)
	// AddToStore adds a directory to the store (nix-store --add).
	AddToStore(ctx context.Context, dir string) (string, error)
}

// ClosureReader reads the host's Nix database ("store"; *nixstore.Store,
// through nix-store --check-validity, -qR and --dump-db), or binary caches
// when substituters are set ("store"; *CacheStore).
type ClosureReader interface {
	// Check says, naming path, why it is not a valid store path.
	Check(path string) error
	// Closure is every path roots need, sorted, as the database has it.
	Closure(ctx context.Context, roots []string) ([]nixstore.PathInfo, error)
}

// CacheClosureReader is a ClosureReader over binary caches: after Closure it
// has each path's narinfo, which stepClosure puts in the state bag
// ("cache_closure") for stepFetch.
type CacheClosureReader interface {
	ClosureReader
	// CacheClosure is the last Closure's narinfos, in the same order.
	CacheClosure() []*binarycache.PathInfo
}

// NARFetcher downloads NARs from binary caches ("store" when substituters
// are set; *CacheStore).
type NARFetcher interface {
	// SpoolProgress downloads p's NAR, verified, into a new file in dir,
	// calling progress with the bytes written (negative when a retry
	// starts over); on an error nothing is left in dir.
	SpoolProgress(ctx context.Context, p *binarycache.PathInfo, dir string, progress func(int64)) (*binarycache.Spooled, error)
}

// NixDBWriter writes the Nix database of the installed system ("nix-db";
// nixstore.DBWriter, in Go: no Nix on the host).
type NixDBWriter interface {
	// Write registers infos under root/nix/var/nix, each registered at regTime.
	Write(ctx context.Context, root string, infos []nixstore.PathInfo, regTime int64) error
}

// FileCopier copies a directory tree ("cp"; CpDriver).
type FileCopier interface {
	// CopyTree copies src to the new dst, leaving out its modes, owners
	// and times (the store fixes them all).
	CopyTree(ctx context.Context, src, dst string) error
}

var (
	_ NixBuilder         = NixDriver{}
	_ ClosureReader      = (*nixstore.Store)(nil)
	_ CacheClosureReader = (*CacheStore)(nil)
	_ NARFetcher         = (*CacheStore)(nil)
	_ NixDBWriter        = nixstore.DBWriter{}
	_ FileCopier         = CpDriver{}
)
