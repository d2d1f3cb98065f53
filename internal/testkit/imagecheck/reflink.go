package imagecheck

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReflinkDir mounts a fresh 1 GiB XFS with reflink on a loop device and
// returns its root, unmounted when the test ends: a filesystem whose files
// can share blocks (FICLONE, copy_file_range clones).
func ReflinkDir(t testing.TB) string {
	t.Helper()
	RequireTool(t, "mkfs.xfs", "mount", "umount")
	if os.Geteuid() != 0 {
		t.Skip("mounting a loop device needs root")
	}
	mnt, unmount, err := MountReflinkXFS(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	return mnt
}

// MountReflinkXFS makes a sparse file of size bytes in dir, an XFS with
// reflink on it, and mounts it by a loop device on dir/xfs: ReflinkDir for
// callers without a testing.TB (the bench).
func MountReflinkXFS(dir string, size int64) (mnt string, unmount func() error, err error) {
	backing := filepath.Join(dir, "xfs.img")
	f, err := os.Create(backing)
	if err != nil {
		return "", nil, err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", nil, err
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", backing).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("mkfs.xfs: %v\n%s", err, out)
	}
	mnt = filepath.Join(dir, "xfs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", nil, err
	}
	if out, err := exec.Command("mount", "-o", "loop", backing, mnt).CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("mounting a fresh XFS: %v\n%s", err, out)
	}
	return mnt, func() error {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			return fmt.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
		return nil
	}, nil
}

// SharedBytes sums the extents of f that FIEMAP marks shared with another
// file.
func SharedBytes(t testing.TB, f *os.File) int64 {
	t.Helper()
	n, err := Shared(f)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Shared is SharedBytes for callers without a testing.TB (the bench).
func Shared(f *os.File) (int64, error) {
	const (
		fsIocFiemap    = 0xC020660B
		flagSync       = 0x1
		extentLast     = 0x1
		extentShared   = 0x2000
		extentsPerCall = 256
		hdr, ext       = 32, 56 // struct fiemap, struct fiemap_extent
	)
	le := binary.LittleEndian
	var total int64
	buf := make([]byte, hdr+extentsPerCall*ext)
	for start := uint64(0); ; {
		clear(buf)
		le.PutUint64(buf[0:], start)
		le.PutUint64(buf[8:], ^uint64(0)-start)
		le.PutUint32(buf[16:], flagSync)
		le.PutUint32(buf[24:], extentsPerCall)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			return 0, fmt.Errorf("FIEMAP %s: %v", f.Name(), e)
		}
		n := le.Uint32(buf[20:])
		if n == 0 {
			return total, nil
		}
		for i := uint32(0); i < n; i++ {
			e := buf[hdr+int(i)*ext:]
			logical, length, flags := le.Uint64(e[0:]), le.Uint64(e[16:]), le.Uint32(e[40:])
			if flags&extentShared != 0 {
				total += int64(length)
			}
			start = logical + length
			if flags&extentLast != 0 {
				return total, nil
			}
		}
	}
}
