package partition

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/seedguid"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/disktest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

const normDisk = 32 * disk.MiB

// blank returns the path of a new sparse file of normDisk bytes.
func blank(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, normDisk); err != nil {
		t.Fatal(err)
	}
	return path
}

// sgdiskImage partitions a new image with sgdisk, which picks random
// disk and partition GUIDs. Partition 2 gets attribute bit 2 (legacy BIOS
// bootable) so that we see attributes survive.
func sgdiskImage(t *testing.T) string {
	t.Helper()
	img := blank(t, "sgdisk.img")
	disktest.Run(t, "sgdisk", "-o", "-n1:2048:+8M", "-t1:ef00", "-c1:EFI system", "-n2:0:0", "-t2:8300", "-c2:root", "-A2:set:2", img)
	return img
}

// sfdiskDOS makes a DOS label with sfdisk, which picks a random disk
// identifier when the script has no label-id.
func sfdiskDOS(t *testing.T) string {
	t.Helper()
	img := blank(t, "dos.img")
	cmd := exec.Command("sfdisk", "-q", img)
	cmd.Stdin = strings.NewReader("label: dos\nstart=2048, size=16384, type=ef, bootable\nstart=18432, type=83\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	return img
}

// normalizeFile re-derives the identifiers from seed, which the tests in
// this file are about; regress_test.go has the default, which keeps them.
func normalizeFile(t *testing.T, path, seed string) (NormalizeReport, error) {
	t.Helper()
	return normalizeWith(t, path, NormalizeOptions{RederiveIDs: true, Seed: []byte(seed)})
}

func normalizeWith(t *testing.T, path string, o NormalizeOptions) (NormalizeReport, error) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Normalize(f, o)
}

func mustNormalize(t *testing.T, path, seed string) NormalizeReport {
	t.Helper()
	r, err := normalizeFile(t, path, seed)
	if err != nil {
		t.Fatalf("Normalize: %v", err)
	}
	return r
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func digest(t *testing.T, path string) [32]byte { return sha256.Sum256(readAll(t, path)) }

func copyImage(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy.img")
	if err := os.WriteFile(dst, readAll(t, src), 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

func checkSgdiskV(t *testing.T, img string) {
	t.Helper()
	if out := disktest.Run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
}

// samePartitions compares what sfdisk reads before and after, apart from
// the unique GUIDs.
func samePartitions(t *testing.T, before, after disktest.SfdiskJSON) {
	t.Helper()
	b, a := before.PartitionTable.Partitions, after.PartitionTable.Partitions
	if before.PartitionTable.Label != after.PartitionTable.Label || len(a) != len(b) {
		t.Fatalf("sfdisk before %+v, after %+v", before, after)
	}
	for i := range b {
		x, y := b[i], a[i]
		x.UUID, y.UUID = "", ""
		if x != y {
			t.Errorf("partition %d: before %+v, after %+v", i+1, x, y)
		}
	}
}

// gptRanges are the bytes Normalize may change in a GPT image with the
// default 128 entries of 128 bytes and used entries 1..used: the MBR
// signature, the disk GUID and two CRCs of each header, and each used
// entry's unique GUID in each array.
func gptRanges(size int64, used int) [][2]int64 {
	last := size/gptspec.SectorSize - 1
	r := [][2]int64{{440, 444}}
	for _, h := range []int64{1, last} {
		o := h * gptspec.SectorSize
		r = append(r, [2]int64{o + 16, o + 20}, [2]int64{o + 56, o + 72}, [2]int64{o + 88, o + 92})
	}
	for _, a := range []int64{2, last - 32} {
		for i := 0; i < used; i++ {
			o := a*gptspec.SectorSize + int64(i)*128 + 16
			r = append(r, [2]int64{o, o + 16})
		}
	}
	return r
}

// ends reads the first and last MiB of an image, where the tables are;
// reading all of a 558 MiB image would be slow.
func ends(t *testing.T, path string) map[int64][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m := map[int64][]byte{}
	for _, off := range []int64{0, st.Size() - disk.MiB} {
		m[off] = make([]byte, disk.MiB)
		if _, err := f.ReadAt(m[off], off); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// changedOnly checks that the bytes that differ between two ends()
// snapshots all lie in allowed.
func changedOnly(t *testing.T, before, after map[int64][]byte, allowed [][2]int64) {
	t.Helper()
	for off, b := range before {
		a, ok := after[off]
		if !ok {
			t.Fatalf("the image was resized")
		}
		for i := range b {
			at := off + int64(i)
			if b[i] == a[i] || slices.ContainsFunc(allowed, func(r [2]int64) bool { return at >= r[0] && at < r[1] }) {
				continue
			}
			t.Errorf("byte %d changed from %#02x to %#02x, outside the normalised fields", at, b[i], a[i])
			return
		}
	}
}

func TestNormalizeGPT(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	a, b := sgdiskImage(t), sgdiskImage(t)
	if digest(t, a) == digest(t, b) {
		t.Fatal("two sgdisk runs made identical images: the test would prove nothing")
	}
	before, beforeMBR, raw := disktest.Sfdisk(t, a), disktest.Sfdisk(t, "-Y", "dos", a), ends(t, a)

	want := []string{"MBR disk signature", "disk GUID", "partition 1 GUID", "partition 2 GUID"}
	for _, img := range []string{a, b} {
		if r := mustNormalize(t, img, "s1"); r.Table != "gpt" || !slices.Equal(r.Fields, want) {
			t.Errorf("report %+v, want gpt %q", r, want)
		}
	}
	if digest(t, a) != digest(t, b) {
		t.Fatal("the two images differ after Normalize with the same seed")
	}
	checkSgdiskV(t, a)
	changedOnly(t, raw, ends(t, a), gptRanges(normDisk, 2))

	g := seedguid.Source{Seed: []byte("s1")}
	after := disktest.Sfdisk(t, a)
	samePartitions(t, before, after)
	if after.PartitionTable.ID != g.GUID("disk") {
		t.Errorf("disk GUID %s, want %s", after.PartitionTable.ID, g.GUID("disk"))
	}
	for i, p := range after.PartitionTable.Partitions {
		if want := g.GUID(fmt.Sprintf("partition-%d", i+1)); p.UUID != want {
			t.Errorf("partition %d GUID %s, want %s", i+1, p.UUID, want)
		}
	}
	// sgdisk leaves the protective MBR's signature 0; we set it as Write does.
	afterMBR := disktest.Sfdisk(t, "-Y", "dos", a)
	samePartitions(t, beforeMBR, afterMBR)
	if want := fmt.Sprintf("0x%08x", g.MBRSignature()); afterMBR.PartitionTable.ID != want {
		t.Errorf("MBR signature %s, want %s", afterMBR.PartitionTable.ID, want)
	}

	// go-diskfs, an independent reader, agrees and sees the attribute.
	d, err := diskfs.Open(a, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := d.GetPartitionTable()
	d.Close()
	if err != nil {
		t.Fatalf("go-diskfs: %v", err)
	}
	tab, ok := pt.(*gpt.Table)
	if !ok || tab.GUID != g.GUID("disk") || len(tab.Partitions) != 2 {
		t.Fatalf("go-diskfs read %+v", pt)
	}
	for i, p := range tab.Partitions {
		s := after.PartitionTable.Partitions[i]
		if int64(p.Start) != s.Start || int64(p.End-p.Start+1) != s.Size || string(p.Type) != s.Type || p.Name != s.Name || p.GUID != s.UUID {
			t.Errorf("go-diskfs partition %d %+v, sfdisk %+v", i+1, p, s)
		}
	}
	if tab.Partitions[1].Attributes != 1<<2 {
		t.Errorf("partition 2 attributes %#x, want bit 2", tab.Partitions[1].Attributes)
	}

	// Idempotent: the second call finds nothing to do.
	sum := digest(t, a)
	if r := mustNormalize(t, a, "s1"); len(r.Fields) != 0 {
		t.Errorf("second Normalize changed %q", r.Fields)
	}
	if digest(t, a) != sum {
		t.Error("second Normalize changed the file")
	}

	// Another seed, other identifiers.
	c := copyImage(t, a)
	if r := mustNormalize(t, c, "s2"); !slices.Equal(r.Fields, want) {
		t.Errorf("seed s2 changed %q, want %q", r.Fields, want)
	}
	checkSgdiskV(t, c)
	other := disktest.Sfdisk(t, c)
	if other.PartitionTable.ID == after.PartitionTable.ID {
		t.Error("disk GUID does not depend on the seed")
	}
	for i, p := range other.PartitionTable.Partitions {
		if p.UUID == after.PartitionTable.Partitions[i].UUID {
			t.Errorf("partition %d GUID does not depend on the seed", i+1)
		}
	}
}

// TestNormalizeBackup damages the backup GPT; Normalize rebuilds it from
// the primary and says so.
func TestNormalizeBackup(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk")
	img := sgdiskImage(t)
	ref := copyImage(t, img)
	mustNormalize(t, ref, "s1")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt(make([]byte, 33*gptspec.SectorSize), normDisk-33*gptspec.SectorSize)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"MBR disk signature", "disk GUID", "partition 1 GUID", "partition 2 GUID", "backup GPT header", "backup GPT partition entries"}
	if r := mustNormalize(t, img, "s1"); !slices.Equal(r.Fields, want) {
		t.Errorf("fields %q, want %q", r.Fields, want)
	}
	checkSgdiskV(t, img)
	if digest(t, img) != digest(t, ref) {
		t.Error("the repaired image differs from one whose backup was intact")
	}
}

func TestNormalizeRefuses(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	poke := func(off int64, b ...byte) func(*testing.T, string) {
		return func(t *testing.T, img string) {
			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
		}
	}
	// sgdisk takes a second per run (it sleeps after syncing): copy one.
	gptImg, dosImg := sgdiskImage(t), sfdiskDOS(t)
	cases := []struct {
		name   string
		image  string
		damage func(*testing.T, string)
		want   []string
	}{
		{"header CRC", gptImg, poke(gptspec.SectorSize+56, 0xff), []string{"primary GPT header CRC32", "corrupt"}},
		{"header CRC field", gptImg, poke(gptspec.SectorSize+16, 0, 0, 0, 0), []string{"primary GPT header CRC32"}},
		{"entries CRC", gptImg, poke(2*gptspec.SectorSize+56, 'X'), []string{"partition entries CRC32", "corrupt"}},
		{"GPT without 55AA", gptImg, poke(510, 0, 0), []string{"0x55AA", "GPT"}},
		{"GPT without protective entry", gptImg, poke(446+4, 0x83), []string{"0xEE", "GPT"}},
		{"0xEE without GPT header", gptImg, poke(gptspec.SectorSize, 0), []string{"0xEE", "no GPT header"}},
		{"resized", gptImg, func(t *testing.T, img string) {
			if err := os.Truncate(img, normDisk+disk.MiB); err != nil {
				t.Fatal(err)
			}
		}, []string{"resized", fmt.Sprint(normDisk/gptspec.SectorSize - 1)}},
		{"DOS without 55AA", dosImg, poke(511, 0), []string{"0x55AA", "MBR"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := copyImage(t, c.image)
			c.damage(t, img)
			sum := digest(t, img)
			_, err := normalizeFile(t, img, "s1")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if digest(t, img) != sum {
				t.Error("the refused image was changed")
			}
		})
	}
}

func TestNormalizeDOS(t *testing.T) {
	imagecheck.RequireTool(t, "sfdisk")
	a, b := sfdiskDOS(t), sfdiskDOS(t)
	if digest(t, a) == digest(t, b) {
		t.Fatal("two sfdisk runs made identical images: the test would prove nothing")
	}
	before, raw := disktest.Sfdisk(t, a), ends(t, a)
	for _, img := range []string{a, b} {
		if r := mustNormalize(t, img, "s1"); r.Table != "mbr" || !slices.Equal(r.Fields, []string{"MBR disk signature"}) {
			t.Errorf("report %+v", r)
		}
	}
	if digest(t, a) != digest(t, b) {
		t.Fatal("the two images differ after Normalize with the same seed")
	}
	changedOnly(t, raw, ends(t, a), [][2]int64{{440, 444}})
	after := disktest.Sfdisk(t, a)
	samePartitions(t, before, after)
	if want := fmt.Sprintf("0x%08x", seedguid.Source{Seed: []byte("s1")}.MBRSignature()); after.PartitionTable.ID != want {
		t.Errorf("disk identifier %s, want %s", after.PartitionTable.ID, want)
	}
	if r := mustNormalize(t, a, "s1"); len(r.Fields) != 0 {
		t.Errorf("second Normalize changed %q", r.Fields)
	}
	if r := mustNormalize(t, a, "s2"); len(r.Fields) != 1 || disktest.Sfdisk(t, a).PartitionTable.ID == after.PartitionTable.ID {
		t.Errorf("seed s2: %+v, id %s", r, disktest.Sfdisk(t, a).PartitionTable.ID)
	}
}

// TestNormalizeNone: without a table nothing is touched, including a
// filesystem boot sector that carries 0x55AA.
func TestNormalizeNone(t *testing.T) {
	cases := map[string][]string{"zeros": nil, "ext4": {"mkfs.ext4", "-q", "-F"}, "vfat": {"mkfs.vfat"}}
	for name, mkfs := range cases {
		t.Run(name, func(t *testing.T) {
			img := blank(t, name+".img")
			if mkfs != nil {
				imagecheck.RequireTool(t, mkfs[0])
				disktest.Run(t, mkfs[0], append(mkfs[1:], img)...)
			}
			sum := digest(t, img)
			r, err := normalizeFile(t, img, "s1")
			if err != nil || r.Table != "none" || len(r.Fields) != 0 {
				t.Errorf("got %+v, %v; want none", r, err)
			}
			if digest(t, img) != sum {
				t.Error("image changed")
			}
		})
	}
	// Shorter than a sector: no table either.
	short := filepath.Join(t.TempDir(), "short.img")
	if err := os.WriteFile(short, []byte{0x55, 0xaa}, 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err := normalizeFile(t, short, "s1"); err != nil || r.Table != "none" {
		t.Errorf("short file: %+v, %v", r, err)
	}
}

// TestNormalizeWritten runs Normalize over our own images: with Plan's
// seed the disk GUID and MBR signature stay (same roles), the partition
// GUIDs change to the partition-N ones, and the disk stays valid.
func TestNormalizeWritten(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	for _, o := range []disk.Options{{Type: disk.Legacy}, {Type: disk.LegacyGPT}, {Type: disk.EFI}, {Type: disk.EFIXBootLdr}, {Type: disk.Hybrid}, {Type: disk.Hybrid, HybridMBR: true}} {
		name := o.Type.String()
		if o.HybridMBR {
			name += "+mbr"
		}
		t.Run(name, func(t *testing.T) {
			o.RootSize, o.Seed = disktest.RootSize, []byte("test")
			l, err := disk.Plan(o)
			if err != nil {
				t.Fatal(err)
			}
			img := disktest.WriteImage(t, l)
			before, raw := disktest.Sfdisk(t, img), ends(t, img)
			r := mustNormalize(t, img, "test")
			g := seedguid.Source{Seed: o.Seed}
			var want []string
			if o.Type.IsGPT() {
				for i := range l.Partitions {
					want = append(want, fmt.Sprintf("partition %d GUID", i+1))
					l.Partitions[i].GUID = g.GUID(fmt.Sprintf("partition-%d", i+1))
				}
				checkSgdiskV(t, img)
				changedOnly(t, raw, ends(t, img), gptRanges(l.DiskSize, len(l.Partitions)))
			}
			if wantTable := map[bool]string{true: "gpt", false: "mbr"}[o.Type.IsGPT()]; r.Table != wantTable || !slices.Equal(r.Fields, want) {
				t.Errorf("report %+v, want %s %q", r, wantTable, want)
			}
			samePartitions(t, before, disktest.Sfdisk(t, img))
			disktest.CheckMBR(t, l, img)
			disktest.CheckDiskfs(t, l, img)
			if r := mustNormalize(t, img, "test"); len(r.Fields) != 0 {
				t.Errorf("second Normalize changed %q", r.Fields)
			}
		})
	}
}
