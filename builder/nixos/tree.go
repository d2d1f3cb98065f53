package nixos

import (
	"context"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/hosttree"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// tree is what goes into the root filesystem. It is walked twice, into the
// ext4 Sizer and then into the Writer, and must make the same calls in the
// same order both times: that is what makes the plan exact.
type tree interface {
	walk(ctx context.Context, t hosttree.Target, setRoot func(ext4.Header) error) (hosttree.Stats, error)
	// ownBytes is the data the walk writes besides the host's files, for
	// the progress bar.
	ownBytes() int64
}

// entries shared by both trees: the root's attributes and how host files map.
type treeBase struct {
	closure []nixstore.PathInfo
	root    ext4.Header // mode and time of the root and of our own entries
	opts    hosttree.Options
}

func (b treeBase) dir(name string, mode uint32) ext4.Header {
	h := b.root
	h.Name, h.Mode = name, unixmode.FileMode(mode)
	return h
}

// copyClosure copies every closure path under dir ("" for the root).
func (b treeBase) copyClosure(ctx context.Context, cp *hosttree.Copier, dir string) error {
	for _, info := range b.closure {
		if err := cp.Copy(ctx, info.Path, path.Join(dir, path.Base(info.Path))); err != nil {
			return err
		}
	}
	return nil
}

// storeTree is a store-only image: the closure at the filesystem's root (it
// is mounted on /nix/store) and the registration nix-store --load-db reads.
type storeTree struct {
	treeBase
	registration []byte
	uploads      string // staged provisioner uploads, written at the root too
	uploadOwner  func(name string) (uid, gid uint32, ok bool)
}

func (s *storeTree) ownBytes() int64 { return int64(len(s.registration)) }

func (s *storeTree) walk(ctx context.Context, t hosttree.Target, setRoot func(ext4.Header) error) (hosttree.Stats, error) {
	if err := setRoot(s.root); err != nil {
		return hosttree.Stats{}, err
	}
	cp := &hosttree.Copier{T: t, Opts: s.opts}
	if err := s.copyClosure(ctx, cp, ""); err != nil {
		return cp.Stats, err
	}
	if s.uploads != "" {
		ents, err := os.ReadDir(s.uploads)
		if err != nil {
			return cp.Stats, err
		}
		// The same copier, so hard links and counts carry over; only the
		// owners nixos-contents gave differ from the store's.
		cp.Opts.OwnerOf = s.uploadOwner
		for _, e := range ents {
			if err := cp.Copy(ctx, filepath.Join(s.uploads, e.Name()), e.Name()); err != nil {
				return cp.Stats, err
			}
		}
	}
	h := s.root
	h.Name, h.Mode, h.Size = nixstore.StoreImageRegistrationPath, 0o444, int64(len(s.registration))
	return cp.Stats, t.Bytes(h, s.registration)
}

// installTree is the root filesystem nixos-install leaves before the
// installer VM activates the system: the skeleton, /nix/store with the
// closure, and /nix/var/nix with the database and the system profile
// (prepared on the host in stateDir by stepNixState).
type installTree struct {
	treeBase
	stateDir    string   // holds nix/var/nix
	mountDirs   []string // the boot partitions' mount points ("boot", "efi", "boot/efi"...)
	ownerNixbld uint32
	channel     bool // root's channels profile exists: link ~root/.nix-defexpr/channels
}

func (s *installTree) ownBytes() int64 { return 0 }

func (s *installTree) walk(ctx context.Context, t hosttree.Target, setRoot func(ext4.Header) error) (hosttree.Stats, error) {
	var st hosttree.Stats
	if err := setRoot(s.root); err != nil {
		return st, err
	}
	cp := &hosttree.Copier{T: t, Opts: s.opts}
	// Sorted: the writer needs each directory's subtree before the next.
	for _, d := range s.skeleton() {
		switch {
		case d.name == "etc/NIXOS":
			h := s.dir(d.name, d.mode)
			if err := t.Bytes(h, nil); err != nil {
				return cp.Stats, err
			}
		case d.name == "nix/store":
			h := s.dir(d.name, d.mode)
			h.Gid = s.ownerNixbld
			if err := t.Mkdir(h); err != nil {
				return cp.Stats, err
			}
			if err := s.copyClosure(ctx, cp, "nix/store"); err != nil {
				return cp.Stats, err
			}
		case d.name == "root/.nix-defexpr/channels":
			h := s.dir(d.name, 0o777)
			if err := t.Symlink(h, "/nix/var/nix/profiles/per-user/root/channels"); err != nil {
				return cp.Stats, err
			}
		case d.name == "nix/var":
			if err := cp.Copy(ctx, filepath.Join(s.stateDir, "nix", "var"), "nix/var"); err != nil {
				return cp.Stats, err
			}
		default:
			if err := t.Mkdir(s.dir(d.name, d.mode)); err != nil {
				return cp.Stats, err
			}
		}
	}
	return cp.Stats, nil
}

type skelEntry struct {
	name string
	mode uint32
}

// skeleton lists, in walk order, what nixos-install creates before
// activation: mount points (the boot partitions' where the system mounts
// them), /etc/NIXOS (which marks a NixOS root for switch-to-configuration),
// the store (root:nixbld 1775) and the state.
func (s *installTree) skeleton() []skelEntry {
	var out []skelEntry
	has := func(name string) bool {
		return slices.ContainsFunc(out, func(e skelEntry) bool { return e.name == name })
	}
	for _, e := range []skelEntry{
		{"boot", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"etc/NIXOS", 0o644},
		{"nix", 0o755}, {"nix/store", 0o1775}, {"nix/var", 0}, {"proc", 0o755},
		{"root", 0o700}, {"root/.nix-defexpr", 0o700}, {"root/.nix-defexpr/channels", 0},
		{"sys", 0o755}, {"tmp", 0o1777},
	} {
		if strings.HasPrefix(e.name, "root/") && !s.channel {
			continue
		}
		out = append(out, e)
	}
	for _, d := range s.mountDirs {
		parts := strings.Split(d, "/")
		for i := range parts {
			if p := strings.Join(parts[:i+1], "/"); !has(p) {
				out = append(out, skelEntry{p, 0o755})
			}
		}
	}
	// A directory's subtree before its next sibling: by path component.
	slices.SortFunc(out, func(a, b skelEntry) int {
		return slices.Compare(strings.Split(a.name, "/"), strings.Split(b.name, "/"))
	})
	return out
}

// nixbldGID is the group NixOS gives /nix/store (ids.gids.nixbld).
const nixbldGID = 30000
