// Package hosttree walks trees into an ext4 image (or into an ext4.Sizer that
// measures the same tree), in the sorted depth-first order the writer streams
// in. Copier copies host trees, keeping the host's hard links; Closure walks a
// closure's store paths, from the host store or from NARs, under one hard-link
// rule that depends on the closure alone.
package hosttree

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
)

// Target receives the tree. Writer and Sizer adapt the ext4 package's two
// halves to it, so one walk serves both planning and writing.
type Target interface {
	Mkdir(h ext4.Header) error
	Symlink(h ext4.Header, target string) error
	Link(name string, ino uint32) error
	// File adds a regular file whose data is read from the host file src.
	File(h ext4.Header, src string) (ino uint32, err error)
	// FileFrom adds a regular file whose data, h.Size bytes, is read from r.
	FileFrom(h ext4.Header, r io.Reader) (ino uint32, err error)
	// Bytes adds a regular file holding data (len(data) == h.Size).
	Bytes(h ext4.Header, data []byte) error
}

// Options map host metadata to the image's.
type Options struct {
	// Owner, when set, replaces every file's uid and gid (the Nix store is
	// root's whatever the host's numbering).
	Owner *[2]uint32
	// OwnerOf, when set, overrides Owner for the entries it knows (by their
	// image name, as given to Target). A Closure calls it from two
	// goroutines at once.
	OwnerOf func(name string) (uid, gid uint32, ok bool)
	// MaxMtime, when set, clamps every time stamp to at most this value, as
	// SOURCE_DATE_EPOCH asks of reproducible builds.
	MaxMtime *int64
}

// Stats counts what a Copier has added.
type Stats struct {
	Files, Dirs, Symlinks, HardLinks int64
	Bytes                            int64
}

type devIno struct{ dev, ino uint64 }

// Copier copies host trees into one Target. Hard links are tracked across
// calls: names sharing a host inode share an image inode. The closure's store
// paths go through Closure instead, whose rule does not depend on the host.
type Copier struct {
	T     Target
	Opts  Options
	Stats Stats

	links map[devIno]uint32
}

// Copy adds the host tree at src (a directory, file or symlink) as dst, a
// slash-separated path relative to the image's root whose parent exists.
func (c *Copier) Copy(ctx context.Context, src, dst string) error {
	if c.links == nil {
		c.links = map[devIno]uint32{}
	}
	return walkHost(ctx, src, dst, c.add)
}

// walkHost calls fn for src and everything under it, in sorted depth-first
// order, with each one's host path and its name in the image under dst.
func walkHost(ctx context.Context, src, dst string, fn func(p, name string) error) error {
	return filepath.WalkDir(src, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := dst
		if rel != "." {
			name = path.Join(dst, filepath.ToSlash(rel))
		}
		return fn(p, name)
	})
}

func (c *Copier) add(p, name string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no stat information", p)
	}
	h := c.Opts.header(name, fi.Mode(), st.Uid, st.Gid, st.Mtim.Sec)
	switch {
	case fi.IsDir():
		c.Stats.Dirs++
		return wrap(name, c.T.Mkdir(h))
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		c.Stats.Symlinks++
		return wrap(name, c.T.Symlink(h, target))
	case fi.Mode().IsRegular():
		key := devIno{uint64(st.Dev), uint64(st.Ino)}
		if st.Nlink > 1 {
			if ino, ok := c.links[key]; ok {
				c.Stats.HardLinks++
				return wrap(name, c.T.Link(name, ino))
			}
		}
		h.Size = fi.Size()
		ino, err := c.T.File(h, p)
		if err != nil {
			return wrap(name, err)
		}
		if st.Nlink > 1 {
			c.links[key] = ino
		}
		c.Stats.Files++
		c.Stats.Bytes += h.Size
		return nil
	default:
		return fmt.Errorf("%s: unsupported file type %s (the Nix store holds only files, directories and symlinks)", p, fi.Mode().Type())
	}
}

// header maps an entry's metadata to the image's.
func (o *Options) header(name string, mode fs.FileMode, uid, gid uint32, mtime int64) ext4.Header {
	h := ext4.Header{
		Name:  name,
		Mode:  mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky),
		Uid:   uid,
		Gid:   gid,
		Mtime: mtime,
	}
	if o.Owner != nil {
		h.Uid, h.Gid = o.Owner[0], o.Owner[1]
	}
	if o.OwnerOf != nil {
		if uid, gid, ok := o.OwnerOf(name); ok {
			h.Uid, h.Gid = uid, gid
		}
	}
	if o.MaxMtime != nil && h.Mtime > *o.MaxMtime {
		h.Mtime = *o.MaxMtime
	}
	return h
}

func wrap(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("writing %s: %w", name, err)
}

// Add adds o's counts to s.
func (s *Stats) Add(o Stats) {
	s.Files += o.Files
	s.Dirs += o.Dirs
	s.Symlinks += o.Symlinks
	s.HardLinks += o.HardLinks
	s.Bytes += o.Bytes
}
