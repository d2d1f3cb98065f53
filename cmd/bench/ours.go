package main

import (
	"context"
	"path/filepath"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/hosttree"
)

// The builder's deterministic store-only settings: root owns everything and
// times are clamped to the epoch.
var (
	oursOwner = [2]uint32{0, 0}
	oursEpoch = int64(epoch)
	oursRoot  = ext4.Header{Mode: 0o755, Mtime: epoch}
)

// oursWalker walks srcs (store paths) as the builder walks a closure: the
// first Walk measures and decides the hard links, the next one replays them.
func oursWalker(srcs []string) *hosttree.Closure {
	return hosttree.NewClosure(hosttree.HostPaths(srcs...), hosttree.Options{Owner: &oursOwner, MaxMtime: &oursEpoch})
}

// planOurs is the builder's first walk: measure the tree (reading only the
// files the hard-link rule must hash).
func planOurs(ctx context.Context, walker *hosttree.Closure, extra int64) (int64, uint32, error) {
	s := ext4.NewSizer()
	if err := s.SetRoot(oursRoot); err != nil {
		return 0, 0, err
	}
	if _, err := walker.Walk(ctx, hosttree.Sizer(s), ""); err != nil {
		return 0, 0, err
	}
	size, inodes := s.Plan(extra)
	return size, inodes, nil
}

// planPeers measures the tree as the other writers copy it: every file its
// own inode but for the hard links the host tree has (ours makes identical
// files one inode, so it needs less room than they do).
func planPeers(ctx context.Context, srcs []string, extra int64) (int64, uint32, error) {
	s := ext4.NewSizer()
	if err := s.SetRoot(oursRoot); err != nil {
		return 0, 0, err
	}
	cp := &hosttree.Copier{T: hosttree.Sizer(s), Opts: hosttree.Options{Owner: &oursOwner, MaxMtime: &oursEpoch}}
	for _, src := range srcs {
		if err := cp.Copy(ctx, src, filepath.Base(src)); err != nil {
			return 0, 0, err
		}
	}
	size, inodes := s.Plan(extra)
	return size, inodes, nil
}

// writeOurs does what the builder does for the root filesystem: plan, then
// stream the closure with a second walk, close and fsync.
func writeOurs(ctx context.Context, image string, srcs []string, extra int64) error {
	walker := oursWalker(srcs)
	size, inodes, err := planOurs(ctx, walker, extra)
	if err != nil {
		return err
	}
	f, err := createImage(image, size)
	if err != nil {
		return err
	}
	defer f.Close()
	uuid := [16]byte(fsUUID)
	w, err := ext4.NewWriter(f, 0, ext4.Options{Size: size, Label: "nixos", UUID: uuid, HashSeed: uuid, Time: epoch, Inodes: inodes})
	if err != nil {
		return err
	}
	if err := w.SetRoot(oursRoot); err != nil {
		return err
	}
	if _, err := walker.Walk(ctx, hosttree.Writer(w, nil), ""); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Sync()
}
