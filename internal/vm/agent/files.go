package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

func (s *Linux) Upload(ctx context.Context, r *protocol.UploadRequest, data io.Reader) (err error) {
	dir, base := filepath.Split(filepath.Clean(r.Path))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+base+".upload-*")
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	n, err := io.Copy(f, data)
	if err != nil {
		return fmt.Errorf("upload %s: %w", r.Path, err)
	}
	if n != r.Size {
		return fmt.Errorf("upload %s: got %d of %d bytes", r.Path, n, r.Size)
	}
	// chown first: it clears setuid/setgid, which chmod then sets.
	if err := f.Chown(r.Uid, r.Gid); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if err := unix.Fchmod(int(f.Fd()), r.Mode&0o7777); err != nil {
		return fmt.Errorf("upload: chmod %s: %w", r.Path, err)
	}
	// The VM may be powered off soon after; the rename must not land
	// before the data.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if err := os.Rename(f.Name(), r.Path); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	return nil
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

func (s *Linux) Download(ctx context.Context, path string, w io.Writer) (protocol.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return protocol.FileInfo{}, fmt.Errorf("download: %s is not a regular file", path)
	}
	n, err := io.Copy(ctxWriter{ctx, w}, f)
	if err != nil {
		return protocol.FileInfo{}, fmt.Errorf("download %s: %w", path, err)
	}
	return protocol.FileInfo{Mode: st.Mode & 0o7777, Uid: int(st.Uid), Gid: int(st.Gid), Size: n}, nil
}

func (s *Linux) Remove(ctx context.Context, path string, recursive bool) error {
	if filepath.Clean(path) == "/" {
		return errors.New("remove: refusing to remove /")
	}
	var err error
	if recursive {
		err = os.RemoveAll(path)
	} else {
		err = os.Remove(path)
	}
	if err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	return nil
}
