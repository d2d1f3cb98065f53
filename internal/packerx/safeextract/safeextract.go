// Package safeextract unpacks a tar stream that an untrusted party produced
// (the installer VM's tar of a directory of the installed system) into a
// host directory, so that nothing in the stream can reach outside it.
//
// Every path is resolved beneath the destination without following any
// symbolic link: openat2 with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS where the
// kernel has it, otherwise a walk one component at a time with
// O_NOFOLLOW|O_DIRECTORY. Symbolic links from the archive are created as
// links and never traversed; regular files are created with
// O_CREAT|O_EXCL|O_NOFOLLOW, so an existing inode is never written through
// (an existing non-directory of the same name is unlinked first, as tar
// replaces it). Absolute names and names with a ".." component are refused,
// as are hard links whose target is not itself a name beneath the
// destination. The total size and the number of entries are bounded.
package safeextract

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The default bounds of one extraction.
const (
	// MaxBytes bounds the sum of the regular files' sizes.
	MaxBytes int64 = 4 << 30
	// MaxEntries bounds the number of tar entries, skipped ones included.
	MaxEntries = 1_000_000
)

// maxTrailing bounds what Tar reads after the end of the archive (tar pads
// its last record; GNU tar's are 10 KiB).
const maxTrailing = 1 << 20

// Options tune Tar. The zero value applies the default bounds and skips
// nothing.
type Options struct {
	MaxBytes   int64 // 0: MaxBytes
	MaxEntries int   // 0: MaxEntries
	// Skip, when set, is asked about every entry by its cleaned name
	// relative to the destination ("a/b", no "./"); true leaves it out.
	Skip func(name string) bool
}

// noOpenat2 is set when the kernel lacks openat2; tests set it to exercise
// the walk.
var noOpenat2 atomic.Bool

// Tar extracts the tar stream r into dst, creating dst if it is missing,
// and reads r to its end.
// Entry types other than directories, regular files, symbolic and hard
// links (devices, FIFOs, global headers) are ignored, as before.
// It stops at the first refused or failed entry, with an error naming it;
// what was extracted before stays.
func Tar(dst string, r io.Reader, opt Options) error {
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = MaxBytes
	}
	if opt.MaxEntries <= 0 {
		opt.MaxEntries = MaxEntries
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	root, err := unix.Open(dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dst, Err: err}
	}
	defer unix.Close(root)
	x := &extractor{root: root, dst: dst}
	tr := tar.NewReader(r)
	var total int64
	for entries := 1; ; entries++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// Read the padding after the end of the archive, so that a
			// writer on a pipe finishes, but not forever.
			n, err := io.Copy(io.Discard, io.LimitReader(r, maxTrailing+1))
			if err == nil && n > maxTrailing {
				err = fmt.Errorf("more than %d bytes after the end of the tar archive", maxTrailing)
			}
			return err
		}
		if err != nil {
			return fmt.Errorf("reading the tar stream: %w", err)
		}
		if entries > opt.MaxEntries {
			return fmt.Errorf("tar stream has more than %d entries (the limit)", opt.MaxEntries)
		}
		name, err := cleanName(h.Name)
		if err != nil {
			return err
		}
		if name == "." || (opt.Skip != nil && opt.Skip(name)) {
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = x.mkdir(name, h.FileInfo().Mode().Perm()|0o700)
		case tar.TypeReg:
			if h.Size < 0 || h.Size > opt.MaxBytes-total {
				return fmt.Errorf("tar entry %q: %d bytes would take the extraction past its limit of %d bytes", h.Name, h.Size, opt.MaxBytes)
			}
			total += h.Size
			err = x.file(name, h.FileInfo().Mode().Perm(), tr)
		case tar.TypeSymlink:
			if h.Linkname == "" {
				return fmt.Errorf("tar entry %q: symbolic link with an empty target", h.Name)
			}
			err = x.symlink(name, h.Linkname)
		case tar.TypeLink:
			target, terr := cleanName(h.Linkname)
			if terr != nil || target == "." {
				return fmt.Errorf("tar entry %q: hard link to %q, outside the destination", h.Name, h.Linkname)
			}
			err = x.link(name, target)
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("tar entry %q: %w", h.Name, err)
		}
	}
}

// cleanName checks a tar name (or hard link target) and returns it relative
// to the destination: never absolute, never with a ".." component.
func cleanName(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("tar entry with an empty name")
	case strings.HasPrefix(name, "/"):
		return "", fmt.Errorf("tar entry %q: absolute names are refused", name)
	case strings.IndexByte(name, 0) >= 0:
		return "", fmt.Errorf("tar entry %q: NUL in the name", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("tar entry %q: names with a \"..\" component are refused", name)
		}
	}
	return path.Clean(name), nil
}

type extractor struct {
	root int // dst, opened once
	dst  string
}

// parent opens the directory holding name, resolved beneath the root
// without following symbolic links; missing directories are created when
// create is set. The
// caller closes the descriptor unless it is x.root.
func (x *extractor) parent(name string, create bool) (int, string, error) {
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		return x.root, base, nil
	}
	if !noOpenat2.Load() {
		fd, err := unix.Openat2(x.root, dir, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS,
		})
		switch {
		case err == nil:
			return fd, base, nil
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.E2BIG):
			// No openat2 (kernels before 5.6, or a seccomp filter): walk.
			noOpenat2.Store(true)
		case errors.Is(err, unix.ELOOP):
			return -1, "", fmt.Errorf("%s goes through a symbolic link; links from the archive are never followed", dir)
		case errors.Is(err, unix.EXDEV):
			return -1, "", fmt.Errorf("%s resolves outside the destination", dir)
		case errors.Is(err, unix.ENOENT) && create:
			// Some directory is missing: the walk creates it.
		default:
			return -1, "", &os.PathError{Op: "open", Path: dir, Err: err}
		}
	}
	fd, err := x.walk(dir, create)
	return fd, base, err
}

// walk opens dir one component at a time with O_NOFOLLOW|O_DIRECTORY,
// creating missing components when create is set.
func (x *extractor) walk(dir string, create bool) (int, error) {
	fd := x.root
	done := ""
	for _, c := range strings.Split(dir, "/") {
		if c == "" || c == "." {
			continue
		}
		done = path.Join(done, c)
		next, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, c, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		if fd != x.root {
			unix.Close(fd)
		}
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return -1, fmt.Errorf("%s is not a directory (a symbolic link?); links from the archive are never followed", done)
			}
			return -1, &os.PathError{Op: "open", Path: done, Err: err}
		}
		fd = next
	}
	return fd, nil
}

func (x *extractor) closeParent(fd int) {
	if fd != x.root {
		unix.Close(fd)
	}
}

func (x *extractor) mkdir(name string, perm os.FileMode) error {
	dir, base, err := x.parent(name, true)
	if err != nil {
		return err
	}
	defer x.closeParent(dir)
	err = unix.Mkdirat(dir, base, uint32(perm))
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if serr := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil
		}
		return fmt.Errorf("%s exists and is not a directory", name)
	}
	return err
}

// replace unlinks an existing non-directory at base, never following it.
func replace(dir int, base, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%s exists and is a directory", name)
	}
	return unix.Unlinkat(dir, base, 0)
}

func (x *extractor) file(name string, perm os.FileMode, r io.Reader) error {
	dir, base, err := x.parent(name, true)
	if err != nil {
		return err
	}
	defer x.closeParent(dir)
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dir, base, flags, uint32(perm))
	if errors.Is(err, unix.EEXIST) {
		if err = replace(dir, base, name); err == nil {
			fd, err = unix.Openat(dir, base, flags, uint32(perm))
		}
	}
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), path.Join(x.dst, name))
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (x *extractor) symlink(name, target string) error {
	dir, base, err := x.parent(name, true)
	if err != nil {
		return err
	}
	defer x.closeParent(dir)
	err = unix.Symlinkat(target, dir, base)
	if errors.Is(err, unix.EEXIST) {
		if err = replace(dir, base, name); err == nil {
			err = unix.Symlinkat(target, dir, base)
		}
	}
	return err
}

// link makes name a hard link to target, both beneath the root; target
// itself is not followed if it is a symbolic link.
func (x *extractor) link(name, target string) error {
	tdir, tbase, err := x.parent(target, false)
	if err != nil {
		return fmt.Errorf("hard link target %s: %w", target, err)
	}
	defer x.closeParent(tdir)
	var st unix.Stat_t
	if err := unix.Fstatat(tdir, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("hard link target %s: %w", target, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("hard link target %s is a directory", target)
	}
	dir, base, err := x.parent(name, true)
	if err != nil {
		return err
	}
	defer x.closeParent(dir)
	err = unix.Linkat(tdir, tbase, dir, base, 0)
	if errors.Is(err, unix.EEXIST) {
		if err = replace(dir, base, name); err == nil {
			err = unix.Linkat(tdir, tbase, dir, base, 0)
		}
	}
	return err
}

// LimitWriter returns a writer that passes at most max bytes to w and fails
// beyond, with an error naming the limit (MaxBytes when max is 0).
func LimitWriter(w io.Writer, max int64) io.Writer {
	if max <= 0 {
		max = MaxBytes
	}
	return &limitWriter{w: w, left: max, max: max}
}

type limitWriter struct {
	w         io.Writer
	left, max int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		n, err := l.w.Write(p[:l.left])
		l.left -= int64(n)
		if err == nil {
			err = fmt.Errorf("download is larger than its limit of %d bytes", l.max)
		}
		return n, err
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}
