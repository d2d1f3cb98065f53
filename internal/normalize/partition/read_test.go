package partition

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/disktest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// ReadPartitions finds what Write laid out, for every table type, and
// nothing on a bare filesystem.
func TestReadPartitions(t *testing.T) {
	for _, typ := range []disk.Type{disk.Legacy, disk.LegacyGPT, disk.EFI, disk.EFIXBootLdr, disk.Hybrid, disk.None} {
		t.Run(string(typ), func(t *testing.T) {
			l := disktest.PlanDefault(t, typ)
			f, err := os.Open(disktest.WriteImage(t, l))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := ReadPartitions(f)
			if err != nil {
				t.Fatal(err)
			}
			if typ == disk.None {
				if len(got) != 0 {
					t.Fatalf("a bare filesystem has partitions %+v", got)
				}
				return
			}
			if len(got) != len(l.Partitions) {
				t.Fatalf("got %d partitions %+v, want %d", len(got), got, len(l.Partitions))
			}
			for i, p := range l.Partitions {
				if got[i].Start != p.Start || got[i].Size != p.Size {
					t.Errorf("partition %d: %+v, want start %d size %d", i+1, got[i], p.Start, p.Size)
				}
			}
		})
	}
}

// A DOS table with several entries, one slot left empty, as sfdisk writes
// it: every used entry, numbered by its slot.
func TestReadPartitionsDOS(t *testing.T) {
	imagecheck.RequireTool(t, "sfdisk")
	img := filepath.Join(t.TempDir(), "dos.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader("label: dos\n1: start=2048, size=8192, type=83\n3: start=12288, size=4096, type=c\n4: start=20480, size=2048, type=83\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := ReadPartitions(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{1, 2048 * 512, 8192 * 512}, {3, 12288 * 512, 4096 * 512}, {4, 20480 * 512, 2048 * 512}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
