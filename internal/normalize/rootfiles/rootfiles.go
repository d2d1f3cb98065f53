// Package rootfiles settles, inside an ext4 filesystem someone else wrote,
// the files of an installed NixOS root that record the moment or the
// machine of its build (account files' order, Nix database registration
// times, machine-id). Files are found and read with internal/normalize/ext4's
// bounded reader and rewritten over their own data blocks; only the
// machine-id's removal is left to debugfs.
package rootfiles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/ext4"
)

// The files inside an installed root that record the moment or the
// machine of a build: nixos-reproducible settles them in images other
// builders made (nixos-image settles them while it builds).
var (
	// AccountFiles are kept sorted: activation appends accounts in Perl's
	// random hash order.
	AccountFiles = []string{"/etc/shadow", "/etc/gshadow", "/etc/subuid", "/etc/subgid"}
	// MachineIDFile names the machine; an image must not carry one.
	MachineIDFile = "/etc/machine-id"
	nixDB         = "/nix/var/nix/db/db.sqlite"
)

// edit is one planned in-place rewrite.
type edit struct {
	file *ext4.File
	data []byte
	line string
}

// Settle settles, in the ext4 filesystem at off that owns size bytes there
// (its partition), what an installed system records of its build: the order
// of /etc/shadow and friends (activation appends accounts in hash order),
// every path's registrationTime in the Nix database, and /etc/machine-id
// (removed, its bytes zeroed first). It runs before ext4.Normalize, which
// then clears the traces of the edits (times, the freed inode). Files that
// are not there are skipped; nothing is said of a filesystem that holds
// none.
//
// Every file is looked up, read and checked (dense, same size, blocks of
// its own) before any is written: an error before the writes leaves the
// filesystem byte-identical.
func Settle(f *os.File, off, size int64, t int64) ([]string, error) {
	fsys, err := ext4.Open(f, off, size)
	if err != nil {
		return nil, err
	}
	var edits []edit
	var notes []string
	plan := func(p string, change func([]byte) ([]byte, string, error)) (bool, error) {
		fl, err := fsys.Lookup(p)
		if errors.Is(err, ext4.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		data, err := fsys.ReadFile(fl)
		if err != nil {
			return false, err
		}
		out, line, err := change(data)
		if err != nil || out == nil {
			if line != "" {
				notes = append(notes, line)
			}
			return false, err
		}
		if err := fsys.CheckRewrite(fl, out); err != nil {
			return false, err
		}
		edits = append(edits, edit{file: fl, data: out, line: line})
		return true, nil
	}
	for _, p := range AccountFiles {
		if _, err := plan(p, func(b []byte) ([]byte, string, error) {
			if s := SortLines(b); !bytes.Equal(s, b) {
				return s, p + " sorted", nil
			}
			return nil, "", nil
		}); err != nil {
			return nil, err
		}
	}
	if _, err := plan(nixDB, func(b []byte) ([]byte, string, error) { return nixDBTimes(b, t) }); err != nil {
		return nil, err
	}
	rmMachineID, err := plan(MachineIDFile, func(b []byte) ([]byte, string, error) {
		return make([]byte, len(b)), MachineIDFile + " removed", nil
	})
	if err != nil {
		return nil, err
	}
	files := make([]*ext4.File, len(edits))
	for i, e := range edits {
		files[i] = e.file
	}
	if err := ext4.Disjoint(files...); err != nil {
		return nil, err
	}

	// Everything checked: now write.
	var done []string
	for _, e := range edits {
		if err := fsys.Rewrite(e.file, e.data); err != nil {
			return nil, err
		}
		done = append(done, e.line)
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if rmMachineID {
		if err := debugfsRemove(f, off, MachineIDFile); err != nil {
			return nil, err
		}
	}
	return append(done, notes...), f.Sync()
}

// debugfsRemove removes path with debugfs -w. debugfs takes the offset only
// as "image?offset=N" and cuts the name at its first '?', so it opens our
// descriptor as /dev/fd/3: neither the image's path (spaces, '?') nor any
// text of ours but a fixed request reaches it.
func debugfsRemove(f *os.File, off int64, path string) error {
	cmd := exec.CommandContext(context.Background(), "debugfs", "-w", "-R", "rm "+path, fmt.Sprintf("/dev/fd/3?offset=%d", off))
	cmd.ExtraFiles = []*os.File{f}
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debugfs rm %s: %v: %s", path, err, strings.TrimSpace(errb.String()))
	}
	// debugfs reports errors on stderr and exits 0; Settle found the file.
	if msg := strings.TrimSpace(errb.String()); strings.Contains(msg, "ext2_lookup") || strings.Contains(msg, "rm:") {
		return fmt.Errorf("debugfs rm %s: %s", path, msg)
	}
	return nil
}

// nixDBTimes sets every registrationTime to t with sqlite3 on a copy. It
// returns nil when nothing changes, or when the copy's size changed (an
// UPDATE of integers of the same width changes no page count, so that is
// not expected): the file is rewritten over its own blocks only.
func nixDBTimes(data []byte, t int64) ([]byte, string, error) {
	dir, err := os.MkdirTemp("", "packer-nixos-reproduce-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(dir)
	db := filepath.Join(dir, "db.sqlite")
	if err := os.WriteFile(db, data, 0o600); err != nil {
		return nil, "", err
	}
	sql := fmt.Sprintf("PRAGMA journal_mode=DELETE; UPDATE ValidPaths SET registrationTime = %d WHERE registrationTime != %d;", t, t)
	if out, err := exec.Command("sqlite3", db, sql).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("sqlite3 on the image's Nix database: %v: %s", err, strings.TrimSpace(string(out)))
	}
	updated, err := os.ReadFile(db)
	if err != nil {
		return nil, "", err
	}
	if bytes.Equal(updated, data) {
		return nil, "", nil
	}
	if len(updated) != len(data) {
		return nil, fmt.Sprintf("left alone: %s (setting registrationTime would change its size)", nixDB), nil
	}
	return updated, nixDB + " registrationTime", nil
}

// SortLines sorts a file's lines bytewise, keeping a final newline.
func SortLines(b []byte) []byte {
	if len(b) == 0 {
		return b
	}
	s := string(b)
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	sort.Strings(lines)
	out := strings.Join(lines, "\n")
	if strings.HasSuffix(s, "\n") {
		out += "\n"
	}
	return []byte(out)
}
