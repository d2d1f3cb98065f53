package qemuimg

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

func TestEveryFormat(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-img")
	src := imagecheck.RandomSparseImage(t, 64<<20, 1<<20)
	d := ExecDriver{}
	for _, c := range []struct{ format, compression string }{
		{"raw", ""}, {"qcow2", ""}, {"qcow2-compressed", ""}, {"qcow2", "zstd"}, {"qcow2-compressed", "zlib"},
		{"vdi", ""}, {"vpc", ""}, {"vhdx", ""}, {"vmdk", ""}, {"vmdk-stream", ""},
	} {
		t.Run(c.format+"-"+c.compression, func(t *testing.T) {
			s, err := Parse(c.format, c.compression)
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(t.TempDir(), "out."+s.Ext)
			var last float64
			calls := 0
			if err := d.Convert(context.Background(), s, src, "raw", dst, func(p float64) { last = p; calls++ }); err != nil {
				t.Fatal(err)
			}
			if calls == 0 || last != 100 {
				t.Errorf("progress: %d calls, last %.2f%%; want it to end at 100%%", calls, last)
			}
			if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", s.Qemu, src, dst).CombinedOutput(); err != nil {
				t.Errorf("qemu-img compare: %v: %s", err, out)
			}
			if s.Qemu != "raw" && s.Qemu != "vpc" {
				if out, err := exec.Command("qemu-img", "check", "-f", s.Qemu, dst).CombinedOutput(); err != nil {
					t.Errorf("qemu-img check: %v: %s", err, out)
				}
			}
			info, err := d.Info(context.Background(), dst, s.Qemu)
			if err != nil {
				t.Fatal(err)
			}
			if info.Format != s.Qemu || info.VirtualSize < 64<<20 {
				t.Errorf("qemu-img info: %+v", info)
			}
			if s.Qemu == "vmdk" {
				want := map[string]string{"vmdk": "monolithicSparse", "vmdk-stream": "streamOptimized"}[s.Name]
				out, _ := exec.Command("qemu-img", "info", "-f", "vmdk", dst).CombinedOutput()
				if !strings.Contains(string(out), "create type: "+want) {
					t.Errorf("qemu-img info lacks create type %s:\n%s", want, out)
				}
			}
			if s.Packed {
				want := "zlib"
				if c.compression != "" {
					want = c.compression
				}
				out, _ := exec.Command("qemu-img", "info", "-f", "qcow2", dst).CombinedOutput()
				if !strings.Contains(string(out), "compression type: "+want) {
					t.Errorf("qemu-img info lacks compression type %s:\n%s", want, out)
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ format, compression, want string }{
		{"qed", "", `format: "qed" is not a known format; allowed: azure, gce, ova, qcow2, qcow2-compressed, raw, vdi, vhdx, vmdk, vmdk-stream, vpc`},
		{"vdi", "zstd", `compression: only qcow2 images are compressed; format is "vdi"`},
		{"qcow2", "lz4", `compression: "lz4" is not allowed; allowed: zlib, zstd`},
	} {
		if _, err := Parse(c.format, c.compression); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q, %q) = %v; want %q", c.format, c.compression, err, c.want)
		}
	}
}

// A 100 GiB sparse raw image converts with bounded memory and the output
// stays sparse: qemu-img skips holes rather than reading them.
func TestSparseHugeInputBoundedMemory(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-img")
	src := imagecheck.RandomSparseImage(t, 100<<30, 1<<20)
	for _, name := range []string{"raw", "qcow2", "vpc", "vmdk"} {
		s, _ := Parse(name, "")
		dst := filepath.Join(t.TempDir(), "out."+s.Ext)
		cmd := exec.Command("qemu-img", s.Args(src, "raw", dst)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", name, err, out)
		}
		rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
		if rss > 256<<20 {
			t.Errorf("%s: qemu-img peak RSS %d MiB for a 100 GiB sparse input; want < 256 MiB", name, rss>>20)
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 64<<20 {
			t.Errorf("%s: the output takes %d MiB on disk for 4 MiB of data; want it sparse", name, used>>20)
		}
		t.Logf("%s: peak RSS %d MiB", name, rss>>20)
	}
}

func TestReadProgress(t *testing.T) {
	var got []float64
	readProgress(strings.NewReader("    (0.00/100%)\r    (50.50/100%)\r    (100.00/100%)\r\nnoise\n"), func(p float64) { got = append(got, p) })
	if len(got) != 3 || got[1] != 50.5 || got[2] != 100 {
		t.Fatalf("got %v", got)
	}
}
