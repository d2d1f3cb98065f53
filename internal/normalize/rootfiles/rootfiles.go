// Package rootfiles settles, inside an ext4 filesystem someone else wrote,
// the files of an installed NixOS root that record the moment or the
// machine of its build (account files' order, Nix database registration
// times, machine-id), rewriting them over their own blocks with debugfs.
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
	"strconv"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
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

// debugfs is e2fsprogs' debugfs on one ext4 filesystem inside an image:
// the tool reads files and removes one; rewrites go straight to the blocks
// it names, so the layout never changes.
type debugfs struct {
	image string
	off   int64
}

func (d debugfs) spec() string { return fmt.Sprintf("%s?offset=%d", d.image, d.off) }

func (d debugfs) run(write bool, request string) (string, error) {
	args := []string{"-R", request, d.spec()}
	if write {
		args = append([]string{"-w"}, args...)
	}
	cmd := exec.CommandContext(context.Background(), "debugfs", args...)
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("debugfs %q: %v: %s", request, err, strings.TrimSpace(errb.String()))
	}
	// debugfs reports a missing path on stderr and exits 0.
	if strings.Contains(errb.String(), "File not found by ext2_lookup") {
		return "", errNotFound
	}
	return out.String(), nil
}

var errNotFound = errors.New("not found")

// stat returns a regular file's size and its data blocks in file order, or
// errNotFound.
func (d debugfs) stat(path string) (int64, []int64, error) {
	out, err := d.run(false, "stat "+path)
	if err != nil {
		return 0, nil, err
	}
	if !strings.Contains(out, "Type: regular") {
		return 0, nil, fmt.Errorf("%s is not a regular file", path)
	}
	i := strings.Index(out, "Size: ")
	if i < 0 {
		return 0, nil, fmt.Errorf("%s: no size in debugfs stat", path)
	}
	f := strings.Fields(out[i+len("Size: "):])
	size, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: size %q", path, f[0])
	}
	out, err = d.run(false, "blocks "+path)
	if err != nil {
		return 0, nil, err
	}
	var blocks []int64
	for _, s := range strings.Fields(out) {
		b, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: block %q", path, s)
		}
		blocks = append(blocks, b)
	}
	return size, blocks, nil
}

// rewrite writes data, of the file's own length, over its blocks in place.
// A file with holes (fewer blocks than its size needs) is refused.
func (d debugfs) rewrite(f *os.File, path string, size int64, blocks []int64, data []byte, blockSize int64) error {
	if int64(len(data)) != size {
		return fmt.Errorf("%s: new content is %d bytes, the file %d", path, len(data), size)
	}
	if need := (size + blockSize - 1) / blockSize; int64(len(blocks)) != need {
		return fmt.Errorf("%s: %d blocks for %d bytes (a sparse file)", path, len(blocks), size)
	}
	for i, b := range blocks {
		chunk := data[int64(i)*blockSize : min(int64(i+1)*blockSize, size)]
		if _, err := f.WriteAt(chunk, d.off+b*blockSize); err != nil {
			return err
		}
	}
	return nil
}

// read returns a file's content, or errNotFound.
func (d debugfs) read(path string, size int64) ([]byte, error) {
	tmp, err := os.CreateTemp("", "packer-nixos-reproduce-")
	if err != nil {
		return nil, err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if _, err := d.run(false, fmt.Sprintf("dump %s %s", path, tmp.Name())); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(tmp.Name())
	if err == nil && int64(len(b)) != size {
		err = fmt.Errorf("%s: dumped %d bytes of %d", path, len(b), size)
	}
	return b, err
}

// Settle settles, in the ext4 filesystem at off, what an installed
// system records of its build: the order of /etc/shadow and friends
// (activation appends accounts in hash order), every path's
// registrationTime in the Nix database, and /etc/machine-id (removed, its
// bytes zeroed first). It runs before ext4.Normalize, which then clears the
// traces of debugfs' own writes (times, the freed inode). Files that are
// not there are skipped; nothing is said of a filesystem that holds none.
func Settle(f *os.File, off int64, t int64) ([]string, error) {
	if err := f.Sync(); err != nil {
		return nil, err
	}
	d := debugfs{image: f.Name(), off: off}
	const blockSize = ext4spec.BlockSize // ext4.Normalize accepts nothing else
	var done []string
	for _, p := range AccountFiles {
		size, blocks, err := d.stat(p)
		if err == errNotFound {
			continue
		}
		if err != nil {
			return nil, err
		}
		data, err := d.read(p, size)
		if err != nil {
			return nil, err
		}
		sorted := SortLines(data)
		if bytes.Equal(sorted, data) {
			continue
		}
		if err := d.rewrite(f, p, size, blocks, sorted, blockSize); err != nil {
			return nil, err
		}
		done = append(done, p+" sorted")
	}

	if size, blocks, err := d.stat(nixDB); err == nil {
		line, err := d.nixDB(f, size, blocks, blockSize, t)
		if err != nil {
			return nil, err
		}
		if line != "" {
			done = append(done, line)
		}
	} else if err != errNotFound {
		return nil, err
	}

	if size, blocks, err := d.stat(MachineIDFile); err == nil {
		if err := d.rewrite(f, MachineIDFile, size, blocks, make([]byte, size), blockSize); err != nil {
			return nil, err
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
		if _, err := d.run(true, "rm "+MachineIDFile); err != nil {
			return nil, err
		}
		done = append(done, MachineIDFile+" removed")
	} else if err != errNotFound {
		return nil, err
	}
	return done, f.Sync()
}

// nixDB sets every registrationTime to t with sqlite3 on a copy and writes
// the copy back over the file's blocks when its size is unchanged (an
// UPDATE of integers of the same width changes no page count).
func (d debugfs) nixDB(f *os.File, size int64, blocks []int64, blockSize, t int64) (string, error) {
	data, err := d.read(nixDB, size)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "packer-nixos-reproduce-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	db := filepath.Join(dir, "db.sqlite")
	if err := os.WriteFile(db, data, 0o600); err != nil {
		return "", err
	}
	sql := fmt.Sprintf("PRAGMA journal_mode=DELETE; UPDATE ValidPaths SET registrationTime = %d WHERE registrationTime != %d;", t, t)
	if out, err := exec.Command("sqlite3", db, sql).CombinedOutput(); err != nil {
		return "", fmt.Errorf("sqlite3 on the image's Nix database: %v: %s", err, strings.TrimSpace(string(out)))
	}
	updated, err := os.ReadFile(db)
	if err != nil {
		return "", err
	}
	if bytes.Equal(updated, data) {
		return "", nil
	}
	if int64(len(updated)) != size {
		return fmt.Sprintf("left alone: %s (setting registrationTime would change its size)", nixDB), nil
	}
	if err := d.rewrite(f, nixDB, size, blocks, updated, blockSize); err != nil {
		return "", err
	}
	return nixDB + " registrationTime", nil
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
