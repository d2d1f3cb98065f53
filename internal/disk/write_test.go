package disk_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/disktest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

var (
	reField = regexp.MustCompile(`(?m)^(Partition GUID code|Partition unique GUID|First sector|Last sector|Attribute flags|Partition name): (\S+)`)
	reDisk  = regexp.MustCompile(`Disk identifier \(GUID\): (\S+)`)
)

func TestWriteGPT(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	for _, typ := range []disk.Type{disk.LegacyGPT, disk.EFI, disk.EFIXBootLdr, disk.Hybrid} {
		t.Run(typ.String(), func(t *testing.T) {
			l := disktest.PlanDefault(t, typ)
			img := disktest.WriteImage(t, l)
			if out := disktest.Run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
				t.Fatalf("sgdisk -v:\n%s", out)
			}
			if m := reDisk.FindStringSubmatch(disktest.Run(t, "sgdisk", "-p", img)); m == nil || m[1] != l.DiskGUID {
				t.Errorf("sgdisk disk GUID %v, want %s", m, l.DiskGUID)
			}
			for i, p := range l.Partitions {
				got := map[string]string{}
				for _, m := range reField.FindAllStringSubmatch(disktest.Run(t, "sgdisk", "-i", strconv.Itoa(i+1), img), -1) {
					got[m[1]] = m[2]
				}
				want := map[string]string{
					"Partition GUID code":   p.TypeGUID,
					"Partition unique GUID": p.GUID,
					"First sector":          strconv.FormatInt(p.FirstLBA(), 10),
					"Last sector":           strconv.FormatInt(p.LastLBA(), 10),
					"Attribute flags":       "0000000000000000",
					"Partition name":        "'" + p.Name + "'",
				}
				for k, v := range want {
					if got[k] != v {
						t.Errorf("partition %d %s: sgdisk says %q, want %q", i+1, k, got[k], v)
					}
				}
			}
			// sfdisk: GPT view, then the MBR under it.
			j := disktest.Sfdisk(t, img)
			if j.PartitionTable.Label != "gpt" || j.PartitionTable.ID != l.DiskGUID || len(j.PartitionTable.Partitions) != len(l.Partitions) {
				t.Fatalf("sfdisk GPT view: %+v", j)
			}
			for i, p := range l.Partitions {
				s := j.PartitionTable.Partitions[i]
				if s.Start != p.FirstLBA() || s.Size != p.Size/disk.SectorSize || s.Type != p.TypeGUID || s.UUID != p.GUID || s.Name != p.Name {
					t.Errorf("sfdisk partition %d: %+v, want %+v", i+1, s, p)
				}
			}
			disktest.CheckMBR(t, l, img)
			disktest.CheckDiskfs(t, l, img)
		})
	}
}

func TestWriteLegacy(t *testing.T) {
	imagecheck.RequireTool(t, "sfdisk")
	l := disktest.PlanDefault(t, disk.Legacy)
	img := disktest.WriteImage(t, l)
	disktest.CheckMBR(t, l, img)
	disktest.CheckDiskfs(t, l, img)
	if out := disktest.Run(t, "sfdisk", "-d", img); !strings.Contains(out, "label: dos") || strings.Contains(out, "gpt") {
		t.Errorf("sfdisk -d:\n%s", out)
	}
}

func TestWriteNone(t *testing.T) {
	l := disktest.PlanDefault(t, disk.None)
	img := disktest.WriteImage(t, l)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Error("none wrote something")
	}
	if l.MBR() != nil || l.MBRSignature != 0 || l.DiskGUID != "" {
		t.Errorf("none layout has a table: %+v", l)
	}
}

// TestHybridMBR compares our hybrid MBR with what sgdisk --hybrid=1:3 makes
// of the same GPT.
func TestHybridMBR(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	plain := disktest.PlanDefault(t, disk.Hybrid)
	ref := disktest.WriteImage(t, plain)
	disktest.Run(t, "sgdisk", "--hybrid=1:3", ref)
	l, err := disk.Plan(disk.Options{Type: disk.Hybrid, RootSize: disktest.RootSize, Seed: []byte("test"), HybridMBR: true})
	if err != nil {
		t.Fatal(err)
	}
	img := disktest.WriteImage(t, l)
	if out := disktest.Run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
	disktest.CheckMBR(t, l, img)
	disktest.CheckDiskfs(t, l, img)
	ours, theirs := disktest.Sfdisk(t, "-Y", "dos", img), disktest.Sfdisk(t, "-Y", "dos", ref)
	if fmt.Sprint(ours.PartitionTable.Partitions) != fmt.Sprint(theirs.PartitionTable.Partitions) {
		t.Errorf("hybrid MBR\nours   %+v\nsgdisk %+v", ours.PartitionTable.Partitions, theirs.PartitionTable.Partitions)
	}
	if len(l.MBR()) != 3 || l.MBR()[0].Type != 0xee {
		t.Errorf("hybrid MBR entries %+v", l.MBR())
	}
}

func TestBigDisk(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	l, err := disk.Plan(disk.Options{Type: disk.EFI, RootSize: disktest.RootSize, DiskSize: 3 << 40})
	if err != nil {
		t.Fatal(err)
	}
	img := disktest.WriteImage(t, l)
	if out := disktest.Run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
	if m := l.MBR(); m[0].Sectors != 0xffffffff {
		t.Errorf("protective MBR past 2 TiB: %+v", m)
	}
	disktest.CheckMBR(t, l, img)
	if _, err := disk.Plan(disk.Options{Type: disk.Legacy, RootSize: disktest.RootSize, DiskSize: 3 << 40}); err == nil || !strings.Contains(err.Error(), "2 TiB") {
		t.Errorf("legacy 3 TiB: %v", err)
	}
	if _, err := disk.Plan(disk.Options{Type: disk.Hybrid, HybridMBR: true, RootSize: disktest.RootSize, DiskSize: 3 << 40}); err == nil || !strings.Contains(err.Error(), "2 TiB") {
		t.Errorf("hybrid MBR 3 TiB: %v", err)
	}
}

func TestWriteWrongSize(t *testing.T) {
	l := disktest.PlanDefault(t, disk.EFI)
	f, err := os.Create(filepath.Join(t.TempDir(), "small.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(l.DiskSize - disk.MiB); err != nil {
		t.Fatal(err)
	}
	if err := l.Write(f); err == nil || !strings.Contains(err.Error(), strconv.FormatInt(l.DiskSize, 10)) {
		t.Errorf("Write into a short file: %v", err)
	}
}
