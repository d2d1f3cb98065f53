package vhd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/vhdspec"
)

func TestSize(t *testing.T) {
	for _, tc := range []struct{ in, want int64 }{
		{0, MinSize},
		{5_000_000, MinSize},
		{20 << 20, 20 << 20},
		{20<<20 + 1, 21 << 20},
		{(3 << 30) - 512, 3 << 30},
	} {
		if got := Size(tc.in); got != tc.want {
			t.Errorf("Size(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// The footer is the one qemu-img writes for subformat=fixed,force_size=on,
// but for the unique id and time stamp, which qemu-img takes from the
// random generator and the clock.
func TestFooterMatchesQemuImg(t *testing.T) {
	qemuImg := lookPath(t, "qemu-img")
	dir := t.TempDir()
	for _, size := range []int64{20 << 20, 21 << 20, 1 << 30, 127<<30 + 1<<20} {
		raw, img := filepath.Join(dir, "a.raw"), filepath.Join(dir, "a.vhd")
		os.Remove(img)
		if err := os.Truncate(raw, 0); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		mustTruncate(t, raw, size)
		out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", raw, img).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img: %v: %s", err, out)
		}
		theirs := tail(t, img)
		var id [16]byte
		copy(id[:], theirs[vhdspec.OffUniqueID:])
		unix := int64(binary.BigEndian.Uint32(theirs[vhdspec.OffTimestamp:])) + vhdspec.Epoch
		if ours := Footer(size, id, unix); !bytes.Equal(ours, theirs) {
			t.Errorf("size %d: footer differs from qemu-img's:\nours   % x\ntheirs % x", size, ours[:96], theirs[:96])
		}
	}
}

func TestFinish(t *testing.T) {
	qemuImg := lookPath(t, "qemu-img")
	path := filepath.Join(t.TempDir(), "disk.vhd")
	// 5 MB of which only the first and last 4 KiB hold data.
	mustTruncate(t, path, 5_000_000)
	head, end := bytes.Repeat([]byte{0xa5}, 4096), bytes.Repeat([]byte{0x5a}, 4096)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(head, 0)
	f.WriteAt(end, 5_000_000-4096)
	f.Close()

	id := [16]byte{1, 2, 3}
	size, err := Finish(path, id, 1_700_000_000)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if size != 20<<20 || fi.Size() != 20<<20+FooterSize {
		t.Fatalf("virtual size %d, file %d; want 20 MiB and 20 MiB + 512", size, fi.Size())
	}
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 64<<10 {
		t.Errorf("%d bytes allocated: the padding is not sparse", blocks)
	}
	b, _ := os.ReadFile(path)
	if !bytes.Equal(b[:4096], head) || !bytes.Equal(b[5_000_000-4096:5_000_000], end) || !bytes.Equal(b[5_000_000:20<<20], make([]byte, 20<<20-5_000_000)) {
		t.Error("the data moved, or the padding is not zero")
	}
	footer := b[20<<20:]
	if string(footer[:8]) != "conectix" || binary.BigEndian.Uint32(footer[vhdspec.OffDiskType:]) != vhdspec.DiskFixed || binary.BigEndian.Uint32(footer[vhdspec.OffChecksum:]) != vhdspec.Checksum(footer, vhdspec.OffChecksum) {
		t.Errorf("footer % x", footer[:96])
	}

	// qemu-img reads it as a VHD of exactly that size (a fixed VHD has no
	// header: qemu-img only finds it with -f vpc).
	out, err := exec.Command(qemuImg, "info", "-f", "vpc", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info: %v", err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize != 20<<20 {
		t.Errorf("qemu-img info: virtual size %d (%v), want %d", info.VirtualSize, err, 20<<20)
	}
	// The data reads back through qemu's vpc driver.
	back := filepath.Join(t.TempDir(), "back.raw")
	if out, err := exec.Command(qemuImg, "convert", "-f", "vpc", "-O", "raw", path, back).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	if rb, _ := os.ReadFile(back); !bytes.Equal(rb, b[:20<<20]) {
		t.Error("qemu-img reads other data than the raw image's")
	}

	if _, err := Finish(filepath.Join(t.TempDir(), "missing"), id, 0); err == nil {
		t.Error("Finish of a missing file succeeded")
	}
}

func TestFinishTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.raw")
	mustTruncate(t, path, MaxSize+1)
	if _, err := Finish(path, [16]byte{}, 0); err == nil {
		t.Fatal("a disk larger than a VHD holds was accepted")
	}
	if fi, _ := os.Stat(path); fi.Size() != MaxSize+1 {
		t.Errorf("the refused file was changed: %d bytes", fi.Size())
	}
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

func mustTruncate(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(n); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func tail(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	b := make([]byte, FooterSize)
	if _, err := f.ReadAt(b, fi.Size()-FooterSize); err != nil {
		t.Fatal(err)
	}
	return b
}
