package disk_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/disktest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// partedScript is make-disk-image's partitioning, bootEnd in MiB.
func partedScript(t disk.Type, bootEndMiB int64) []string {
	b := fmt.Sprintf("%dMiB", bootEndMiB)
	switch t {
	case disk.Legacy:
		return []string{"mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "100%"}
	case disk.LegacyGPT:
		return []string{"mklabel", "gpt", "mkpart", "no-fs", "1MB", "2MB", "set", "1", "bios_grub", "on",
			"mkpart", "primary", "ext4", "2MB", "100%"}
	case disk.EFI:
		return []string{"mklabel", "gpt", "mkpart", "ESP", "fat32", "8MiB", b, "set", "1", "boot", "on",
			"mkpart", "primary", "ext4", b, "100%"}
	case disk.EFIXBootLdr:
		return []string{"mklabel", "gpt", "mkpart", "ESP", "fat32", "8MiB", "100MiB", "set", "1", "boot", "on",
			"mkpart", "BOOT", "fat32", "100MiB", b, "set", "2", "bls_boot", "on", "mkpart", "ROOT", "ext4", b, "100%"}
	case disk.Hybrid:
		return []string{"mklabel", "gpt", "mkpart", "ESP", "fat32", "8MiB", b, "set", "1", "boot", "on",
			"mkpart", "no-fs", "0", "1024KiB", "set", "2", "bios_grub", "on", "mkpart", "primary", "ext4", b, "100%"}
	}
	return nil
}

// TestMatchesParted runs make-disk-image's own parted calls on a file of
// the same size and compares every partition, for the default boot size
// and for an odd fixed disk with another boot size.
func TestMatchesParted(t *testing.T) {
	imagecheck.RequireTool(t, "parted", "sfdisk")
	cases := []disk.Options{}
	for _, typ := range []disk.Type{disk.Legacy, disk.LegacyGPT, disk.EFI, disk.EFIXBootLdr, disk.Hybrid} {
		cases = append(cases, disk.Options{Type: typ, RootSize: disktest.RootSize})
		o := disk.Options{Type: typ, RootSize: disktest.RootSize, DiskSize: 2000*disk.MiB + 7*disk.SectorSize}
		if typ.HasBootSize() {
			o.BootSize = 300*disk.MiB + 4096
		}
		cases = append(cases, o)
	}
	for _, o := range cases {
		l, err := disk.Plan(o)
		if err != nil {
			t.Fatalf("Plan(%+v): %v", o, err)
		}
		bs := o.BootSize
		if bs == 0 {
			bs = disk.DefaultBootSize
		}
		ours := disktest.Sfdisk(t, disktest.WriteImage(t, l))
		ref := filepath.Join(t.TempDir(), "parted.img")
		if err := os.WriteFile(ref, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(ref, l.DiskSize); err != nil {
			t.Fatal(err)
		}
		disktest.Run(t, "parted", append([]string{"--script", ref, "--"}, partedScript(o.Type, disk.BootEnd(bs)/disk.MiB)...)...)
		theirs := disktest.Sfdisk(t, ref)
		if len(ours.PartitionTable.Partitions) != len(theirs.PartitionTable.Partitions) {
			t.Fatalf("%s: ours %+v, parted %+v", o.Type, ours, theirs)
		}
		for i, p := range theirs.PartitionTable.Partitions {
			q := ours.PartitionTable.Partitions[i]
			p.UUID, q.UUID = "", ""
			if p != q {
				t.Errorf("%s (disk %d, boot %d) partition %d: ours %+v, parted %+v", o.Type, l.DiskSize, o.BootSize, i+1, q, p)
			}
		}
	}
}
