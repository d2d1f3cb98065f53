package imagecheck

import (
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
	"testing"

	dfile "github.com/diskfs/go-diskfs/backend/file"
	dext4 "github.com/diskfs/go-diskfs/filesystem/ext4"
)

// storeDir is the host store whose paths ReadWithDiskfs maps to the image's root.
const storeDir = "/nix/store/"

// OpenDiskfs opens the filesystem of sizeBytes bytes read-only with go-diskfs, a reader
// written independently of ours and of e2fsprogs.
func OpenDiskfs(t testing.TB, fsys FS, sizeBytes int64) *dext4.FileSystem {
	t.Helper()
	f, err := os.Open(fsys.Image)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	d, err := dext4.Read(dfile.New(f, true), sizeBytes, fsys.Offset, 512)
	if err != nil {
		t.Fatalf("go-diskfs: opening %s (%d bytes): %v", fsys, sizeBytes, err)
	}
	return d
}

// DiskfsReadFile is d.ReadFile with go-diskfs v1.9.4's panics (on files with holes, among
// others) turned into errors.
func DiskfsReadFile(d *dext4.FileSystem, name string) (data []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			data, err = nil, fmt.Errorf("go-diskfs panicked reading %s: %v", name, r)
		}
	}()
	return d.ReadFile(name)
}

// ReadWithDiskfs reads each of files (host store paths, /nix/store/<hash>-<name>/...,
// regular files or symlinks) through go-diskfs from the image, where it sits at the root
// as <hash>-<name>/..., and checks content or target against the host store.
// go-diskfs v1.9.4 cannot read files with holes: pass files without.
func ReadWithDiskfs(t testing.TB, fsys FS, sizeBytes int64, files []string) {
	t.Helper()
	d := OpenDiskfs(t, fsys, sizeBytes)
	rep := &reporter{t: t}
	for _, p := range files {
		name, ok := strings.CutPrefix(p, storeDir)
		if !ok {
			t.Fatalf("ReadWithDiskfs: %s is not under %s", p, storeDir)
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case fi.Mode().IsRegular():
			want, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DiskfsReadFile(d, name)
			if err != nil {
				rep.errorf("go-diskfs: %s: %v", name, err)
			} else if sha256.Sum256(got) != sha256.Sum256(want) {
				rep.errorf("go-diskfs: %s reads %d bytes (sha256 %x), host store %d bytes (sha256 %x)",
					name, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
			}
		case fi.Mode()&os.ModeSymlink != 0:
			want, err := os.Readlink(p)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := d.ReadLink(name); err != nil || got != want {
				rep.errorf("go-diskfs: %s: symlink to %q (%v), host store %q", name, got, err, want)
			}
		default:
			t.Fatalf("ReadWithDiskfs: %s is neither a regular file nor a symlink", p)
		}
	}
	rep.done("ReadWithDiskfs " + fsys.String())
}
