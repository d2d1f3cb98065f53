package nixos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
)

// storeComm is the communicator of store-only mode. There is no system to
// run commands in; uploads are staged on the host and the engine writes
// them into the image with the closure, so the build stays host-only and
// deterministic. Paths are relative to the store filesystem's root (what is
// mounted on /nix/store).
type storeComm struct {
	dir string // staging directory: the uploads, as they will be in the image
	// owners are the uid/gid that stageops operations gave, by image path
	// without its leading slash (as the tree walk names entries); the rest
	// is root's.
	owners map[string][2]uint32
}

var _ packersdk.Communicator = (*storeComm)(nil)

var errNoCommands = errors.New("store-only images have no system to run commands in; use install mode (only_nix_store = false)")

// Start fails every command at once, saying why on its stderr. (Returning
// the error instead would have Packer's shell provisioner retry it for its
// start_retry_timeout, five minutes by default.)
func (s *storeComm) Start(_ context.Context, cmd *packersdk.RemoteCmd) error {
	if cmd.Stderr != nil {
		fmt.Fprintf(cmd.Stderr, "nixos-image: %v\n", errNoCommands)
	}
	cmd.SetExited(127)
	return nil
}

// staged maps an image path to the staging directory for a write (Upload,
// UploadDir, the staging operations). It refuses paths that would leave
// it, and paths through a staged symbolic link, which would have the write
// land on the host; a link at the path itself is removed, as the new
// upload replaces it.
func (s *storeComm) staged(p string) (string, error) {
	return s.resolve(p, true)
}

// stagedRead maps an image path to the staging directory for a read
// (Download, DownloadDir). A read changes nothing in the staging area, so
// a link at the path itself is not removed but refused like one on the
// way: following it could read host files from outside the staging area.
func (s *storeComm) stagedRead(p string) (string, error) {
	return s.resolve(p, false)
}

func (s *storeComm) resolve(p string, write bool) (string, error) {
	clean := path.Clean("/" + p)
	if clean == "/" {
		return "", fmt.Errorf("%q: not a file path in the image", p)
	}
	verb := "read"
	if write {
		verb = "write"
	}
	parts := strings.Split(clean[1:], "/")
	local := s.dir
	for i, part := range parts {
		local = filepath.Join(local, part)
		fi, err := os.Lstat(local)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			continue
		}
		if i < len(parts)-1 || !write {
			return "", fmt.Errorf("%s: /%s is a symbolic link in the image; refusing to %s through it", clean, path.Join(parts[:i+1]...), verb)
		}
		if err := os.Remove(local); err != nil {
			return "", err
		}
	}
	return filepath.Join(s.dir, filepath.FromSlash(clean)), nil
}

// Upload stages a file, keeping the mode its FileInfo carries (0644
// without one); owners are root's, as everything in the store.
func (s *storeComm) Upload(dst string, r io.Reader, fi *os.FileInfo) error {
	if dst == stageops.Path {
		return s.apply(r)
	}
	local, err := s.staged(dst)
	if err != nil {
		return err
	}
	mode := fs.FileMode(0o644)
	if fi != nil && *fi != nil {
		mode = (*fi).Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	}
	if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(local, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(local, mode) // after writing: the umask does not apply, and setuid survives
}

// apply carries out the stageops operations of nixos-contents.
func (s *storeComm) apply(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 64<<20))
	if err != nil {
		return err
	}
	ops, err := stageops.Decode(b)
	if err != nil {
		return err
	}
	for _, op := range ops {
		local, err := s.staged(op.Path)
		if err != nil {
			return err
		}
		if op.Mkdir {
			if err := os.MkdirAll(local, 0o755); err != nil {
				return err
			}
		}
		if op.Mode != nil {
			if err := os.Chmod(local, unixmode.FileMode(*op.Mode)); err != nil {
				return err
			}
		}
		if op.Owner != nil {
			if err := s.chown(local, op.Path, *op.Owner); err != nil {
				return err
			}
		}
	}
	return nil
}

// chown records owner for the staged path and everything under it.
func (s *storeComm) chown(local, image string, owner [2]uint32) error {
	if s.owners == nil {
		s.owners = map[string][2]uint32{}
	}
	return filepath.WalkDir(local, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(local, p)
		if err != nil {
			return err
		}
		s.owners[strings.TrimPrefix(path.Join(image, filepath.ToSlash(rel)), "/")] = owner
		return nil
	})
}

// ownerOf is hosttree's hook for the owners chown gave.
func (s *storeComm) ownerOf(name string) (uid, gid uint32, ok bool) {
	o, ok := s.owners[name]
	return o[0], o[1], ok
}

// UploadDir stages src like rsync: the directory itself, or its contents
// when src ends in "/".
func (s *storeComm) UploadDir(dst, src string, exclude []string) error {
	return uploadWalk(dst, src, exclude, func(local, target string, fi fs.FileInfo) error {
		staged, err := s.staged(target)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if err := os.MkdirAll(staged, 0o755); err != nil {
				return err
			}
			return os.Chmod(staged, fi.Mode().Perm())
		case fi.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(local)
			if err != nil {
				return err
			}
			os.Remove(staged)
			return os.Symlink(link, staged)
		}
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		return s.Upload(target, f, &fi)
	})
}

// Download reads back a file uploaded in this build.
func (s *storeComm) Download(src string, w io.Writer) error {
	local, err := s.stagedRead(src)
	if err != nil {
		return err
	}
	f, err := os.Open(local)
	if err != nil {
		return fmt.Errorf("%s: only files uploaded in this build can be read back from a store-only image: %w", src, err)
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// DownloadDir copies back a directory uploaded in this build.
func (s *storeComm) DownloadDir(src, dst string, exclude []string) error {
	local, err := s.stagedRead(src)
	if err != nil {
		return err
	}
	return filepath.WalkDir(local, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(local, p)
		for _, ex := range exclude {
			if ok, _ := filepath.Match(ex, rel); ok {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		out := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(out, fi.Mode().Perm()|0o700)
		case fi.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, out)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		o, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm())
		if err != nil {
			return err
		}
		_, err = io.Copy(o, in)
		if cerr := o.Close(); err == nil {
			err = cerr
		}
		return err
	})
}

// checkUploads refuses provisioner uploads that would replace a store path
// or the registration at the store filesystem's root.
func checkUploads(dir string, closure []nixstore.PathInfo) error {
	taken := map[string]bool{nixstore.StoreImageRegistrationPath: true, "lost+found": true}
	for _, info := range closure {
		taken[filepath.Base(info.Path)] = true
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if taken[e.Name()] {
			return fmt.Errorf("a provisioner uploaded /%s, which the store image already holds (a store path, the registration or lost+found)", e.Name())
		}
	}
	return nil
}
