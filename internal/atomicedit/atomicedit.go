// Package atomicedit edits a file through a copy that replaces it only when
// the edit is complete, so that an error, Ctrl-C or kill -9 at any moment
// leaves either the untouched file or the finished one.
package atomicedit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Edit copies path beside itself (sharing blocks where the filesystem can
// clone them, else keeping its holes), calls edit with a path naming the
// copy, and renames the copy over path once edit succeeded and the copy is
// on disk. The copy is an unnamed file (O_TMPFILE) until that moment, so a
// process killed while editing leaves nothing behind: only the instant
// between naming the copy and renaming it can leave a ".NAME.edit-*" file.
// The copy keeps path's permission bits, and its owner where the caller may
// set it.
func Edit(ctx context.Context, path string, edit func(ctx context.Context, copyPath string) error) (err error) {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	dir := filepath.Dir(path)
	tmp, named, err := create(dir, filepath.Base(path), st.Mode().Perm())
	if err != nil {
		return err
	}
	defer func() {
		tmp.Close()
		if err != nil && named != "" {
			os.Remove(named)
		}
	}()
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		// Keep the owner where we may (as root); others get the copy as theirs.
		_ = tmp.Chown(int(sys.Uid), int(sys.Gid))
		_ = tmp.Chmod(st.Mode().Perm())
	}
	if err := Copy(ctx, tmp, src, st.Size()); err != nil {
		return fmt.Errorf("copying %s: %w", path, err)
	}
	// Others open the copy by this name (debugfs, sqlite3 run as
	// processes of their own): /proc/PID/fd/N reaches the unnamed file.
	copyPath := named
	if copyPath == "" {
		copyPath = "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(tmp.Fd()))
	}
	if err := edit(ctx, copyPath); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if named == "" {
		if named, err = link(tmp, dir, filepath.Base(path)); err != nil {
			return err
		}
	}
	if err := os.Rename(named, path); err != nil {
		return err
	}
	named = "" // it is path now: not to be removed
	return syncDir(dir)
}

// create makes the copy: unnamed where the filesystem supports it.
func create(dir, base string, perm os.FileMode) (*os.File, string, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, uint32(perm))
	if err == nil {
		// O_TMPFILE applies the umask; the copy must keep the original's bits.
		if err := unix.Fchmod(fd, uint32(perm)); err != nil {
			unix.Close(fd)
			return nil, "", err
		}
		return os.NewFile(uintptr(fd), filepath.Join(dir, "."+base+".edit")), "", nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, "", fmt.Errorf("creating a copy in %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+base+".edit-*")
	if err != nil {
		return nil, "", err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, "", err
	}
	return f, f.Name(), nil
}

// link gives the unnamed copy a name beside its target.
func link(f *os.File, dir, base string) (string, error) {
	proc := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	for i := 0; ; i++ {
		name := filepath.Join(dir, "."+base+".edit-"+strconv.Itoa(os.Getpid())+"-"+strconv.Itoa(i))
		err := unix.Linkat(unix.AT_FDCWD, proc, unix.AT_FDCWD, name, unix.AT_SYMLINK_FOLLOW)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, unix.EEXIST) || i > 100 {
			return "", fmt.Errorf("naming the copy %s: %w", name, err)
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Copy makes dst (empty) a copy of src's size bytes: a clone sharing src's
// blocks where the filesystem can (XFS, btrfs), else its data regions only,
// so holes stay holes. ctx stops it between chunks.
func Copy(ctx context.Context, dst, src *os.File, size int64) error {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err == nil {
		return nil
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		hole = min(hole, size)
		for at := data; at < hole; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := copyRange(dst, src, at, min(hole-at, copyChunk))
			if err != nil {
				return err
			}
			at += n
		}
		off = hole
	}
	return dst.Truncate(size)
}

// copyChunk bounds one copy so that ctx is checked often.
const copyChunk = 64 << 20

// copyRange copies up to n bytes at off, in the kernel where it can.
func copyRange(dst, src *os.File, off, n int64) (int64, error) {
	in, out := off, off
	c, err := unix.CopyFileRange(int(src.Fd()), &in, int(dst.Fd()), &out, int(n), 0)
	if err == nil && c > 0 {
		return int64(c), nil
	}
	if err != nil && !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return 0, err
	}
	m, err := io.Copy(io.NewOffsetWriter(dst, off), io.NewSectionReader(src, off, n))
	if err == nil && m == 0 {
		err = io.ErrUnexpectedEOF
	}
	return m, err
}
