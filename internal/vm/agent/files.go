package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// maxRemoveDepth bounds how deep a recursive remove descends: it holds one
// descriptor per level, and the agent as PID 1 has 4096 at most.
const maxRemoveDepth = 512

// removeBatch is how many names a recursive remove reads at a time.
const removeBatch = 256

// Upload writes the file through descriptors of its resolved directory:
// the temporary file and the rename stay in the directory resolved inside
// the root, whatever is renamed or linked meanwhile.
func (s *Linux) Upload(ctx context.Context, r *protocol.UploadRequest, data io.Reader) (err error) {
	p := inRoot(r.Path)
	if p == "/" {
		return errors.New("upload: the path names the root, not a file")
	}
	rootfd, err := openRoot(r.Root)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer unix.Close(rootfd)
	dir, base := path.Split(p)
	dirfd, err := mkdirAllIn(rootfd, dir)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer unix.Close(dirfd)
	f, tmp, err := createTemp(dirfd, base)
	if err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			unix.Unlinkat(dirfd, tmp, 0)
		}
	}()
	n, err := io.Copy(f, data)
	if err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	if n != r.Size {
		return fmt.Errorf("upload %s: got %d of %d bytes", p, n, r.Size)
	}
	// chown first: it clears setuid/setgid, which chmod then sets.
	if err := f.Chown(r.Uid, r.Gid); err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	if err := unix.Fchmod(int(f.Fd()), r.Mode&0o7777); err != nil {
		return fmt.Errorf("upload: chmod %s: %w", p, err)
	}
	// The VM may be powered off soon after; the rename must not land
	// before the data.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	// Replaces whatever base is, a symlink included, without following it.
	if err := unix.Renameat(dirfd, tmp, dirfd, base); err != nil {
		return fmt.Errorf("upload: rename to %s: %w", p, err)
	}
	return nil
}

// createTemp makes a new file for base in dirfd, never following a link.
func createTemp(dirfd int, base string) (*os.File, string, error) {
	prefix := "." + base[:min(len(base), 200)] + ".upload-" // within NAME_MAX
	for range 100 {
		name := prefix + strconv.FormatUint(uint64(rand.Uint32()), 36)
		fd, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		return os.NewFile(uintptr(fd), name), name, nil
	}
	return nil, "", errors.New("no unused temporary name")
}

// ctxWriter stops a copy once ctx is done.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// Download follows a symlink at p, as cat would, inside the root.
func (s *Linux) Download(ctx context.Context, root, p string, w io.Writer) (protocol.FileInfo, error) {
	p = inRoot(p)
	rootfd, err := openRoot(root)
	if err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download: %w", err)
	}
	defer unix.Close(rootfd)
	// O_NONBLOCK: opening a FIFO must not wait for a writer.
	fd, err := openIn(rootfd, p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download: %w", err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return protocol.FileInfo{}, fmt.Errorf("download: %s is not a regular file", p)
	}
	n, err := io.Copy(ctxWriter{ctx, w}, f)
	if err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download %s: %w", p, err)
	}
	return protocol.FileInfo{Mode: st.Mode & 0o7777, Uid: int(st.Uid), Gid: int(st.Gid), Size: n}, nil
}

// Remove removes p inside the root as rm would, never following its last
// component; recursive, as rm -r --one-file-system, without following any
// symlink in the tree. A missing p is no error when recursive (rm -rf).
func (s *Linux) Remove(ctx context.Context, root, p string, recursive bool) error {
	p = inRoot(p)
	if p == "/" {
		return errors.New("remove: refusing to remove the root /")
	}
	rootfd, err := openRoot(root)
	if err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	defer unix.Close(rootfd)
	dir, base := path.Split(p)
	dirfd, err := openIn(rootfd, dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		if recursive && errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove: %w", err)
	}
	defer unix.Close(dirfd)
	if recursive {
		err = removeAllAt(ctx, dirfd, base, p, nil, 0)
	} else {
		err = unix.Unlinkat(dirfd, base, 0)
		if errors.Is(err, unix.EISDIR) {
			err = unix.Unlinkat(dirfd, base, unix.AT_REMOVEDIR)
		}
		if err != nil {
			err = &pathErr{"remove", p, err}
		}
	}
	if err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	return nil
}

// removeAllAt removes name in parentfd and, for a directory, everything
// below it on the same filesystem (dev; nil: name's own), through
// descriptors opened with O_NOFOLLOW. p names it in errors.
func removeAllAt(ctx context.Context, parentfd int, name, p string, dev *uint64, depth int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(parentfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &pathErr{"remove", p, err}
	}
	if dev == nil {
		dev = &st.Dev
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(parentfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return &pathErr{"remove", p, err}
		}
		return nil
	}
	if st.Dev != *dev {
		return &pathErr{"remove", p, errors.New("another filesystem is mounted there; not removed")}
	}
	if depth >= maxRemoveDepth {
		return &pathErr{"remove", p, fmt.Errorf("more than %d directories deep", maxRemoveDepth)}
	}
	fd, err := unix.Openat(parentfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &pathErr{"remove", p, err}
	}
	d := os.NewFile(uintptr(fd), p)
	defer d.Close()
	var dst unix.Stat_t
	if err := unix.Fstat(fd, &dst); err != nil {
		return &pathErr{"remove", p, err}
	}
	if dst.Dev != st.Dev || dst.Ino != st.Ino {
		return &pathErr{"remove", p, errors.New("replaced while being removed")}
	}
	// Each pass removes what it read (or fails), so this ends; rereading
	// from the start misses nothing a removal shifted.
	for {
		if _, err := d.Seek(0, io.SeekStart); err != nil {
			return &pathErr{"remove", p, err}
		}
		names, err := d.Readdirnames(removeBatch)
		if len(names) == 0 {
			if err != nil && err != io.EOF {
				return &pathErr{"remove", p, err}
			}
			break
		}
		for _, n := range names {
			if err := removeAllAt(ctx, fd, n, path.Join(p, n), dev, depth+1); err != nil {
				return err
			}
		}
	}
	if err := unix.Unlinkat(parentfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &pathErr{"remove", p, err}
	}
	return nil
}
