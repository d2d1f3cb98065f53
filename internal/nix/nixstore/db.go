package nixstore

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DBPath is where a system's Nix database lives, relative to its root.
const DBPath = "nix/var/nix/db/db.sqlite"

// DBWriter makes the Nix database that nixos-install leaves in a new
// system's root, through the programs that own its format: nix-store loads
// the registration, sqlite3 pins what nix-store stamps with the clock.
type DBWriter struct {
	NixStore string // default "nix-store"
	SQLite   string // default "sqlite3"
}

// Write registers infos in a new database under root (root/nix/var/nix/...),
// with every path's registrationTime set to regTime, so the same closure
// always gives the same bytes.
func (d DBWriter) Write(ctx context.Context, root string, infos []PathInfo, regTime int64) error {
	var reg bytes.Buffer
	if err := WriteRegistration(&reg, infos); err != nil {
		return err
	}
	load := &ExecDriver{Bin: or(d.NixStore, "nix-store"), Args: []string{"--store", root}}
	c := load.cmd(ctx, "--load-db")
	c.Stdin = &reg
	if err := runQuiet(c); err != nil {
		return fmt.Errorf("nix-store --load-db into %s: %w", root, err)
	}
	if err := rebaseLinks(root); err != nil {
		return err
	}
	// VACUUM rewrites the file from scratch, so its pages no longer carry
	// the history of the load.
	sql := fmt.Sprintf("UPDATE ValidPaths SET registrationTime = %d; VACUUM;", regTime)
	if err := runQuiet(exec.CommandContext(ctx, or(d.SQLite, "sqlite3"), filepath.Join(root, DBPath), sql)); err != nil {
		return fmt.Errorf("sqlite3 %s: %w", filepath.Join(root, DBPath), err)
	}
	return nil
}

func runQuiet(c *exec.Cmd) error {
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// rebaseLinks makes the symlinks nix-store left under root that point into
// root (gcroots/profiles -> <root>/nix/var/nix/profiles) point where they
// will be in the system: relative to "/", not to the host's temporary root.
func rebaseLinks(root string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	return filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return err
		}
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		rel, ok := strings.CutPrefix(target, abs+"/")
		if !ok {
			return nil
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		return os.Symlink("/"+rel, p)
	})
}
