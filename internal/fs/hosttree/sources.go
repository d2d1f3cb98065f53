package hosttree

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nartree"
)

// A store path's entries come from the host store (a directory walk with
// lstat) or from its NAR (nartree); both give them in the same order (names
// sorted bytewise, a directory before its contents) with the same headers
// for a canonical store path, so Closure applies one rule to either.

type kind uint8

const (
	kindDir kind = iota + 1
	kindSymlink
	kindFile
)

// entry is one node of a store path, its header already mapped by Options.
type entry struct {
	kind   kind
	h      ext4.Header // Size set for files
	exec   bool        // files: the owner's execute bit (Nix's "executable")
	target string      // symlinks
	host   string      // files from the host: the file to read
	// content reads a NAR file's h.Size bytes; valid until the callback returns,
	// and whatever it leaves unread is skipped.
	content io.Reader
}

// The canonical store's metadata, which a NAR does not carry: Nix
// canonicalises every store path to these (and root's ownership, which
// Options.Owner gives).
const (
	storeDirMode  fs.FileMode = 0o555
	storeExecMode fs.FileMode = 0o555
	storeFileMode fs.FileMode = 0o444
	storeLinkMode fs.FileMode = 0o777
	storeMtime                = 1

	narBuf = 64 << 10
)

// walkEntries calls fn for each entry of sp, named dst and below, in walk
// order.
func (o *Options) walkEntries(ctx context.Context, sp StorePath, dst string, fn func(*entry) error) error {
	if sp.NAR != nil {
		return o.narEntries(ctx, sp, dst, fn)
	}
	return o.hostEntries(ctx, sp.Path, dst, fn)
}

// fileSizes calls fn with the size and executable bit of each regular file
// of sp: the pre-pass, which needs nothing else (a NAR is still read to its
// end, its contents skipped).
func (o *Options) fileSizes(ctx context.Context, sp StorePath, fn func(size int64, exec bool)) error {
	if sp.NAR != nil {
		return o.narEntries(ctx, sp, path.Base(sp.Path), func(e *entry) error {
			if e.kind == kindFile {
				fn(e.h.Size, e.exec)
			}
			return nil
		})
	}
	return walkStat(ctx, sp.Path, path.Base(sp.Path), func(_, _ string, st *unix.Stat_t) error {
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			fn(st.Size, st.Mode&0o100 != 0)
		}
		return nil
	})
}

func (o *Options) hostEntries(ctx context.Context, src, dst string, fn func(*entry) error) error {
	var e entry
	return walkStat(ctx, src, dst, func(p, name string, st *unix.Stat_t) error {
		e = entry{h: o.header(name, unixmode.FileMode(st.Mode), st.Uid, st.Gid, st.Mtim.Sec)}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.kind = kindDir
		case unix.S_IFLNK:
			e.kind = kindSymlink
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.target = target
		case unix.S_IFREG:
			e.kind, e.host = kindFile, p
			e.h.Size = st.Size
			e.exec = st.Mode&0o100 != 0
		default:
			return fmt.Errorf("%s: unsupported file type %#o (the Nix store holds only files, directories and symlinks)", p, st.Mode&unix.S_IFMT)
		}
		return fn(&e)
	})
}

// walkStat calls fn for src (named dst) and, if it is a directory, for
// everything below it: a directory before its contents, names in bytewise
// order (filepath.WalkDir's order, and a NAR's). It keeps only the names of
// the directories it is in, not a DirEntry each (a 50,000-entry directory
// is 2 MiB of names, not 5), and stats relative to the directory (fstatat,
// a third faster than lstat on each full path). fn gets the host path, the
// image name and the lstat result.
func walkStat(ctx context.Context, src, dst string, fn func(p, name string, st *unix.Stat_t) error) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: src, Err: err}
	}
	if err := fn(src, dst, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	return walkStatDir(ctx, src, dst, fn)
}

func walkStatDir(ctx context.Context, dir, name string, fn func(p, name string, st *unix.Stat_t) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return err
	}
	sort.Strings(names)
	fd := int(f.Fd())
	var st unix.Stat_t
	for _, n := range names {
		p := dir + "/" + n
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		child := n
		if name != "" {
			child = name + "/" + n
		}
		if err := fn(p, child, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := walkStatDir(ctx, p, child, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// narEntries reads sp's NAR to its end, so that a verifying reader checks
// the whole archive (its final Read fails on a mismatch), even when fn reads
// no content.
func (o *Options) narEntries(ctx context.Context, sp StorePath, dst string, fn func(*entry) error) (err error) {
	rc, err := sp.NAR()
	if err != nil {
		return fmt.Errorf("%s: opening the NAR: %w", sp.Path, err)
	}
	defer func() {
		if cerr := rc.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("%s: closing the NAR: %w", sp.Path, cerr)
		}
	}()
	// nartree reads token by token: buffered, so that each is not a read of
	// the source (a system call, or a decompressor's and hasher's round).
	var src io.Reader = bufio.NewReaderSize(rc, narBuf)
	if f, ok := rc.(*os.File); ok {
		// A spooled NAR (verified as it was written): contents a walk does
		// not read are skipped by seeking, so the walks that only need the
		// tree and sizes do not read the whole file.
		src = &fileSkipper{Reader: src.(*bufio.Reader), f: f}
	}
	r, err := nartree.NewReader(src)
	if err != nil {
		return fmt.Errorf("%s: %w", sp.Path, err)
	}
	var e entry
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		ne, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", sp.Path, err)
		}
		name := dst
		if ne.Path != "." {
			name = dst + "/" + ne.Path
		}
		var mode fs.FileMode
		e = entry{}
		switch ne.Type {
		case nartree.Directory:
			e.kind, mode = kindDir, storeDirMode
		case nartree.Symlink:
			e.kind, mode, e.target = kindSymlink, storeLinkMode, ne.Target
		case nartree.Regular:
			e.kind, mode, e.exec, e.content = kindFile, storeFileMode, ne.Executable, r
			if ne.Executable {
				mode = storeExecMode
			}
		default:
			return fmt.Errorf("%s: %s: entry type %s", sp.Path, ne.Path, ne.Type)
		}
		e.h = o.header(name, mode, 0, 0, storeMtime)
		e.h.Size = ne.Size
		if err := fn(&e); err != nil {
			return err
		}
	}
}

// fileSkipper is a buffered file that skips by seeking (nartree.Skipper).
type fileSkipper struct {
	*bufio.Reader
	f *os.File
}

func (s *fileSkipper) Skip(n int64) error {
	if b := int64(s.Buffered()); n <= b {
		_, err := s.Discard(int(n))
		return err
	}
	b := s.Buffered()
	if _, err := s.Discard(b); err != nil {
		return err
	}
	if _, err := s.f.Seek(n-int64(b), io.SeekCurrent); err != nil {
		return err
	}
	s.Reset(s.f)
	return nil
}
