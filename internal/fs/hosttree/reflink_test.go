package hosttree

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// On a filesystem that shares blocks (XFS with reflink here, on a loop
// device), a tree written into an image on the same filesystem is not
// copied: copy_file_range clones the files' blocks into the image, which
// FIEMAP then reports as shared. Checked on the image's bytes too.
func TestReflinkedIntoImage(t *testing.T) {
	imagecheck.RequireTool(t, "mkfs.xfs", "mount", "umount")
	if os.Geteuid() != 0 {
		t.Skip("mounting a loop device needs root")
	}
	backing := filepath.Join(t.TempDir(), "xfs.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 1<<30); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", backing).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", backing, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mounting a fresh XFS (the kernel has xfs: /proc/filesystems): %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })

	src := filepath.Join(mnt, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewSource(2))
	big := make([]byte, 64<<20+123)
	r.Read(big)
	if err := os.WriteFile(filepath.Join(src, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(mnt, "image")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 256 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	w, err := ext4.NewWriter(f, 0, ext4.Options{Size: size, Time: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Copier{T: Writer(w, nil)}).Copy(context.Background(), src, "tree"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	shared := sharedBytes(t, f)
	t.Logf("%d MiB of the image share blocks with the tree", shared>>20)
	if shared < 64<<20 {
		t.Errorf("only %d bytes of the image are shared: the 64 MiB file was copied, not cloned", shared)
	}
	// The file reads back from the image (debugfs) as it was written.
	out, err := exec.Command("debugfs", "-R", "cat /tree/big", img).Output()
	if err != nil || !bytes.Equal(out, big) {
		t.Errorf("debugfs cat /tree/big: %v, %d bytes, equal %v", err, len(out), bytes.Equal(out, big))
	}
}

// sharedBytes sums the extents FIEMAP marks shared.
func sharedBytes(t *testing.T, f *os.File) int64 {
	const (
		fsIocFiemap    = 0xC020660B
		extentShared   = 0x2000
		extentLast     = 0x1
		extentsPerCall = 256
		hdr, ext       = 32, 56
	)
	var total int64
	buf := make([]byte, hdr+extentsPerCall*ext)
	for start := uint64(0); ; {
		clear(buf)
		le := binary.LittleEndian
		le.PutUint64(buf[0:], start)
		le.PutUint64(buf[8:], ^uint64(0)-start)
		le.PutUint32(buf[16:], 1) // FIEMAP_FLAG_SYNC
		le.PutUint32(buf[24:], extentsPerCall)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			t.Fatalf("FIEMAP: %v", e)
		}
		n := le.Uint32(buf[20:])
		if n == 0 {
			return total
		}
		for i := uint32(0); i < n; i++ {
			e := buf[hdr+int(i)*ext:]
			logical, length, flags := le.Uint64(e[0:]), le.Uint64(e[16:]), le.Uint32(e[40:])
			if flags&extentShared != 0 {
				total += int64(length)
			}
			start = logical + length
			if flags&extentLast != 0 {
				return total
			}
		}
	}
}
