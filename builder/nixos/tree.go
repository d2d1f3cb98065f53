package nixos

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
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
	// nars, when set, has for each closure path (in closure order) a
	// function opening its NAR, verified against its narinfo (such as
	// binarycache.Spooled.Open), to read the path from instead of the host
	// store. Each is called once per walk; the first walk reads each NAR
	// twice (sizes first, see hosttree.Closure).
	nars []func() (io.ReadCloser, error)

	// walker is the closure's walk, made by the first (measuring) walk: it
	// keeps the hard links that walk decided, which the writing walk replays.
	walker *hosttree.Closure
}

func (b treeBase) dir(name string, mode uint32) ext4.Header {
	h := b.root
	h.Name, h.Mode = name, unixmode.FileMode(mode)
	return h
}

// copyClosure copies every closure path under dir ("" for the root), with
// the closure's hard-link rule (identical non-empty files are one inode,
// whatever the host store shares), and adds what it wrote to st.
func (b *treeBase) copyClosure(ctx context.Context, t hosttree.Target, dir string, st *hosttree.Stats) error {
	first := b.walker == nil
	if first {
		paths := make([]hosttree.StorePath, len(b.closure))
		for i, info := range b.closure {
			paths[i].Path = info.Path
			if b.nars != nil {
				paths[i].NAR = b.nars[i]
			}
		}
		b.walker = hosttree.NewClosure(paths, b.opts)
	}
	s, err := b.walker.Walk(ctx, t, dir)
	st.Add(s)
	if first {
		// The measuring walk's garbage (its tables of sizes and the walk's
		// names) would stay resident into the writing walk and add to its
		// peak (bench200k: about 1 MiB on the median, 6 at worst).
		debug.FreeOSMemory()
	}
	return err
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
	var st hosttree.Stats
	if err := s.copyClosure(ctx, t, "", &st); err != nil {
		return st, err
	}
	if s.uploads != "" {
		ents, err := os.ReadDir(s.uploads)
		if err != nil {
			return st, err
		}
		// Uploads keep the host's hard links (among themselves); only the
		// owners nixos-contents gave differ from the store's.
		cp := &hosttree.Copier{T: t, Opts: s.opts}
		cp.Opts.OwnerOf = s.uploadOwner
		for _, e := range ents {
			if err := cp.Copy(ctx, filepath.Join(s.uploads, e.Name()), e.Name()); err != nil {
				st.Add(cp.Stats)
				return st, err
			}
		}
		st.Add(cp.Stats)
	}
	h := s.root
	h.Name, h.Mode, h.Size = nixstore.StoreImageRegistrationPath, 0o444, int64(len(s.registration))
	return st, t.Bytes(h, s.registration)
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
	var st hosttree.Stats // the closure's
	if err := setRoot(s.root); err != nil {
		return st, err
	}
	cp := &hosttree.Copier{T: t, Opts: s.opts} // nix/var
	err := s.walkSkeleton(ctx, t, cp, &st)
	st.Add(cp.Stats)
	return st, err
}

func (s *installTree) walkSkeleton(ctx context.Context, t hosttree.Target, cp *hosttree.Copier, st *hosttree.Stats) error {
	// Sorted: the writer needs each directory's subtree before the next.
	for _, d := range s.skeleton() {
		switch {
		case d.name == "etc/NIXOS":
			h := s.dir(d.name, d.mode)
			if err := t.Bytes(h, nil); err != nil {
				return err
			}
		case d.name == "nix/store":
			h := s.dir(d.name, d.mode)
			h.Gid = s.ownerNixbld
			if err := t.Mkdir(h); err != nil {
				return err
			}
			if err := s.copyClosure(ctx, t, "nix/store", st); err != nil {
				return err
			}
		case d.name == "root/.nix-defexpr/channels":
			h := s.dir(d.name, 0o777)
			if err := t.Symlink(h, "/nix/var/nix/profiles/per-user/root/channels"); err != nil {
				return err
			}
		case d.name == "nix/var":
			if err := cp.Copy(ctx, filepath.Join(s.stateDir, "nix", "var"), "nix/var"); err != nil {
				return err
			}
		default:
			if err := t.Mkdir(s.dir(d.name, d.mode)); err != nil {
				return err
			}
		}
	}
	return nil
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
