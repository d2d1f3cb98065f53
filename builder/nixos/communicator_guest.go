package nixos

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/safeextract"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentclient"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// guestComm is the communicator of install mode: Packer's provisioners reach
// the installed system through the installer VM's agent, with no SSH.
// Commands run chrooted into the installed system, as nixos-enter runs
// them; paths are the installed system's.
type guestComm struct {
	ctx    context.Context // the installer VM's life
	client *agentclient.Client
}

var _ packersdk.Communicator = (*guestComm)(nil)

// commandEnv is the environment of provisioner commands: the installed
// system's tools first.
var commandEnv = []string{
	"PATH=/run/wrappers/bin:/run/current-system/sw/bin:" + systemProfile + "/sw/bin:/bin:/usr/bin",
	"HOME=/root", "LANG=C.UTF-8", "USER=root",
}

func (g *guestComm) Start(ctx context.Context, cmd *packersdk.RemoteCmd) error {
	stdout, stderr := cmd.Stdout, cmd.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	req := protocol.ExecRequest{Argv: []string{"sh", "-c", cmd.Command}, Env: commandEnv, Chroot: guestRoot, Stdin: cmd.Stdin}
	go func() {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(g.ctx, cancel)
		defer stop()
		status, err := g.client.Exec(ctx, req, stdout, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "nixos-image: running the command in the installer VM: %v\n", err)
			status = packersdk.CmdDisconnect
		}
		cmd.SetExited(status)
	}()
	return nil
}

// Upload writes a file into the installed system, keeping the mode the
// FileInfo carries (0644 without one).
func (g *guestComm) Upload(dst string, r io.Reader, fi *os.FileInfo) error {
	mode := fs.FileMode(0o644)
	var size int64 = -1
	if fi != nil && *fi != nil {
		mode, size = (*fi).Mode().Perm()|(*fi).Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), (*fi).Size()
	}
	if size < 0 {
		// The agent needs the size up front: spool the stream once.
		tmp, err := os.CreateTemp("", "packer-nixos-upload-")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		if size, err = io.Copy(tmp, r); err != nil {
			return err
		}
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		r = tmp
	}
	// The agent resolves dst inside the installed system, as a command
	// there would (its absolute symlinks included), and creates missing
	// directories as mkdir -p there would.
	return g.client.Upload(g.ctx, guestRoot, systemPath(dst), mode, 0, 0, r, size)
}

// UploadDir copies src into dst like rsync: the directory itself, or its
// contents when src ends in "/".
func (g *guestComm) UploadDir(dst, src string, exclude []string) error {
	return uploadWalk(dst, src, exclude, func(local, target string, fi fs.FileInfo) error {
		switch {
		case fi.IsDir():
			return g.run(fmt.Sprintf("mkdir -p %s && chmod %o %s", shellQuote(target), fi.Mode().Perm(), shellQuote(target)))
		case fi.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(local)
			if err != nil {
				return err
			}
			return g.run(fmt.Sprintf("ln -sfn %s %s", shellQuote(link), shellQuote(target)))
		}
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		return g.Upload(target, f, &fi)
	})
}

// uploadWalk walks src as UploadDir copies it: rsync's trailing-slash rule,
// exclude patterns matched against paths relative to src. fn gets each
// directory, symlink and regular file with its path in the image.
func uploadWalk(dst, src string, exclude []string, fn func(local, target string, fi fs.FileInfo) error) error {
	base := dst
	if !strings.HasSuffix(src, "/") {
		base = path.Join(dst, filepath.Base(src))
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		for _, ex := range exclude {
			if ok, _ := filepath.Match(ex, rel); ok {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 && !fi.Mode().IsRegular() {
			return fmt.Errorf("%s: cannot upload a %s", p, fi.Mode().Type())
		}
		return fn(p, path.Join(base, filepath.ToSlash(rel)), fi)
	})
}

// Download copies one file out of the installed system, at most
// safeextract.MaxBytes of it.
func (g *guestComm) Download(src string, w io.Writer) error {
	_, err := g.client.Download(g.ctx, guestRoot, systemPath(src), safeextract.LimitWriter(w, safeextract.MaxBytes))
	return err
}

// DownloadDir copies src out of the installed system with its own tar. The
// stream is the guest's: safeextract keeps it beneath dst (no link from it
// is followed, no absolute or ".." name) and bounds its size and entries.
func (g *guestComm) DownloadDir(src, dst string, exclude []string) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		var stderr strings.Builder
		status, err := g.client.Exec(g.ctx, protocol.ExecRequest{
			Argv: []string{"sh", "-c", "cd " + shellQuote(src) + " && tar -cf - ."}, Env: commandEnv, Chroot: guestRoot,
		}, pw, &stderr)
		if err == nil && status != 0 {
			err = fmt.Errorf("tar in the installed system exited with %d: %s", status, strings.TrimSpace(stderr.String()))
		}
		pw.CloseWithError(err)
		done <- err
	}()
	err := safeextract.Tar(dst, pr, safeextract.Options{Skip: func(name string) bool {
		for _, ex := range exclude {
			if ok, _ := filepath.Match(ex, name); ok {
				return true
			}
		}
		return false
	}})
	if err != nil {
		// Stop the guest's tar, then report what went wrong here first.
		pr.CloseWithError(err)
		<-done
		return fmt.Errorf("downloading %s to %s: %w", src, dst, err)
	}
	return <-done
}

func (g *guestComm) run(script string) error {
	var out strings.Builder
	status, err := g.client.Exec(g.ctx, protocol.ExecRequest{Argv: []string{"sh", "-c", script}, Env: commandEnv, Chroot: guestRoot}, &out, &out)
	if err == nil && status != 0 {
		err = fmt.Errorf("%s: exit status %d: %s", script, status, strings.TrimSpace(out.String()))
	}
	return err
}

// systemPath is p as a path of the installed system, which the agent
// resolves inside guestRoot.
func systemPath(p string) string { return path.Clean("/" + p) }

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
