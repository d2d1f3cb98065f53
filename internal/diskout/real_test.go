package diskout

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/ova"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/vhd"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// write makes format from src into a new directory, deterministically
// with seed, and returns the file.
func write(t *testing.T, src, format, seed string) string {
	t.Helper()
	s := spec(t, format)
	final := filepath.Join(t.TempDir(), "nixos."+s.Ext)
	var last float64
	err := Write(context.Background(), Job{
		Driver: qemuimg.ExecDriver{}, Spec: s, Src: src, SrcFormat: "raw", Final: final,
		Deterministic: true, Seed: func() ([]byte, error) { return []byte(seed), nil }, Time: 1_700_000_000,
		Machine:  ova.Machine{Name: "nixos", CPUs: 2, MemoryMiB: 2048, Firmware: "bios"},
		Progress: func(p float64) { last = p },
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != 100 {
		t.Errorf("%s: progress ended at %.1f%%", format, last)
	}
	return final
}

func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Azure's rules, byte-wise: a fixed VHD whose file is exactly N MiB + 512,
// the footer's cookie conectix, disk type fixed, current size N MiB; the
// data qemu-img reads back is the raw image's, padded with zeros.
func TestAzure(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-img")
	const rawSize = 33<<20 + 4096 // not whole MiB: Azure wants it rounded up
	src := imagecheck.RandomSparseImage(t, rawSize, 256<<10)
	img := write(t, src, "azure", "seed-1")
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	const want = 34 << 20
	if fi.Size() != want+vhd.FooterSize {
		t.Fatalf("file is %d bytes, want %d MiB + 512", fi.Size(), want>>20)
	}
	b, _ := os.ReadFile(img)
	f := b[want:]
	if string(f[:8]) != "conectix" || binary.BigEndian.Uint32(f[60:]) != 2 || binary.BigEndian.Uint64(f[48:]) != want || binary.BigEndian.Uint64(f[40:]) != want {
		t.Errorf("footer: % x", f[:96])
	}
	if a := fi.Sys().(*syscall.Stat_t).Blocks * 512; a > 4<<20 {
		t.Errorf("%d bytes allocated: not sparse", a)
	}
	if out := qemuImg(t, "info", "-f", "vpc", img); !strings.Contains(out, "virtual size: 34 MiB (35651584 bytes)") {
		t.Errorf("qemu-img info:\n%s", out)
	}
	padded := filepath.Join(t.TempDir(), "padded.raw")
	qemuImg(t, "convert", "-f", "raw", "-O", "raw", src, padded)
	if err := os.Truncate(padded, want); err != nil {
		t.Fatal(err)
	}
	if out := qemuImg(t, "compare", "-f", "raw", "-F", "vpc", padded, img); !strings.Contains(out, "identical") {
		t.Errorf("qemu-img compare: %s", out)
	}
	// Reproducible: the same bytes again; another seed, another unique id.
	if again, _ := os.ReadFile(write(t, src, "azure", "seed-1")); !bytes.Equal(again, b) {
		t.Error("a second conversion differs")
	}
	other, _ := os.ReadFile(write(t, src, "azure", "seed-2"))
	if bytes.Equal(other[want+68:want+84], f[68:84]) {
		t.Error("another seed gave the same unique id")
	}
}

// vmdk-stream: a stream-optimised VMDK (qemu-img's create type), read back
// equal, the same bytes twice.
func TestVMDKStream(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-img")
	src := imagecheck.RandomSparseImage(t, 48<<20, 256<<10)
	img := write(t, src, "vmdk-stream", "s")
	if out := qemuImg(t, "info", "-f", "vmdk", img); !strings.Contains(out, "create type: streamOptimized") {
		t.Errorf("qemu-img info:\n%s", out)
	}
	qemuImg(t, "check", "-f", "vmdk", img)
	if out := qemuImg(t, "compare", "-f", "raw", "-F", "vmdk", src, img); !strings.Contains(out, "identical") {
		t.Errorf("qemu-img compare: %s", out)
	}
	a, _ := os.ReadFile(img)
	if b, _ := os.ReadFile(write(t, src, "vmdk-stream", "s")); !bytes.Equal(a, b) {
		t.Error("a second conversion differs")
	}
}

// The archives: each cloud's rule checked by the test oracle (GNU tar,
// qemu-img, xmllint), the disk inside equal to the input, the same bytes
// twice, and nothing but the archive left in the output directory.
func TestArchives(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-img", "tar")
	src := imagecheck.RandomSparseImage(t, 40<<20, 256<<10)
	for _, format := range []string{"gce", "ova", "azure", "vmdk-stream"} {
		t.Run(format, func(t *testing.T) {
			img := write(t, src, format, "s")
			imagecheck.CloudImage(t, format, img, src)
			if ents, _ := os.ReadDir(filepath.Dir(img)); len(ents) != 1 {
				t.Errorf("the output directory holds %d entries", len(ents))
			}
			a, _ := os.ReadFile(img)
			if b, _ := os.ReadFile(write(t, src, format, "s")); !bytes.Equal(a, b) {
				t.Error("a second conversion differs")
			}
		})
	}
}
