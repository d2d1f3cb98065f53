package partition

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/disktest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// editGPT rewrites the primary GPT of an sgdisk image (header at LBA 1,
// 128 entries of 128 bytes at LBA 2) with edit and fixes both CRCs, so
// that only the edited values are wrong. The backup is left as it was.
func editGPT(t *testing.T, img string, edit func(hdr, entries []byte)) {
	t.Helper()
	b := readAll(t, img)
	hdr, entries := b[gptspec.SectorSize:2*gptspec.SectorSize], b[2*gptspec.SectorSize:2*gptspec.SectorSize+128*128]
	edit(hdr, entries)
	le := binary.LittleEndian
	le.PutUint32(hdr[gptspec.GPTHdrEntriesCRC:], crc32.ChecksumIEEE(entries))
	le.PutUint32(hdr[gptspec.GPTHdrCRC:], gptspec.HeaderCRC(hdr, le.Uint32(hdr[gptspec.GPTHdrSize:])))
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// setEntry sets entry i's (0-based) first and last LBA.
func setEntry(i int, first, last uint64) func(hdr, entries []byte) {
	return func(_, entries []byte) {
		e := entries[i*128:]
		binary.LittleEndian.PutUint64(e[gptspec.GPTEntryFirstLBA:], first)
		binary.LittleEndian.PutUint64(e[gptspec.GPTEntryLastLBA:], last)
	}
}

// poke writes b at off in img.
func poke(t *testing.T, img string, off int64, b ...byte) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readPartitions(t *testing.T, img string) ([]Extent, error) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return ReadPartitions(f)
}

// Issue 11 finding 2 (GPT): the old code checked no entry's LBAs. Its
// Normalize accepted each of these tables and wrote (GUIDs and the stale
// backup), so the sha256 changed, and its ReadPartitions returned the
// extents as they came: a negative size (first > last), bytes beyond the
// disk, or int64 overflow of LBA*512 (2^63, 2^64-1 became negative
// offsets). Overlapping partitions were listed as two filesystems sharing
// sectors. Now Normalize and ReadPartitions refuse them, naming the entry,
// and nothing is written.
func TestRefusesBadExtents(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	gptImg, dosImg := sgdiskImage(t), sfdiskDOS(t)
	// sgdiskImage: entry 1 at 2048..18431, entry 2 from 18432 to the
	// last usable LBA.
	lastUsable := uint64(normDisk/gptspec.SectorSize - 34)
	dosEntry2 := int64(gptspec.MBREntriesOffset + gptspec.MBREntrySize)
	cases := []struct {
		name  string
		image string
		edit  func(*testing.T, string)
		want  []string
	}{
		{"GPT first > last", gptImg, func(t *testing.T, img string) { editGPT(t, img, setEntry(1, 30000, 20000)) },
			[]string{"GPT entry 2", "30000..20000"}},
		{"GPT beyond the disk", gptImg, func(t *testing.T, img string) { editGPT(t, img, setEntry(1, 18432, lastUsable+1000)) },
			[]string{"GPT entry 2", "usable LBA 34.."}},
		{"GPT near 2^63", gptImg, func(t *testing.T, img string) { editGPT(t, img, setEntry(1, 1<<63-4, 1<<63+4)) },
			[]string{"GPT entry 2", "9223372036854775804"}},
		{"GPT 2^64-1", gptImg, func(t *testing.T, img string) { editGPT(t, img, setEntry(1, 1<<64-1, 1<<64-1)) },
			[]string{"GPT entry 2", "18446744073709551615"}},
		{"GPT overlap", gptImg, func(t *testing.T, img string) { editGPT(t, img, setEntry(1, 18000, lastUsable)) },
			[]string{"GPT entry 1", "GPT entry 2", "overlap"}},
		{"MBR beyond the disk", dosImg, func(t *testing.T, img string) {
			poke(t, img, dosEntry2+gptspec.MBREntrySectors, 0xf0, 0xff, 0xff, 0xff)
		}, []string{"MBR entry 2", "outside the disk"}},
		{"MBR overlap", dosImg, func(t *testing.T, img string) {
			poke(t, img, dosEntry2+gptspec.MBREntryStartLBA, 0x00, 0x40, 0, 0) // 16384, inside entry 1
		}, []string{"MBR entry 1", "MBR entry 2", "overlap"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := copyImage(t, c.image)
			c.edit(t, img)
			sum := digest(t, img)
			for _, o := range []NormalizeOptions{{}, {RederiveIDs: true, Seed: []byte("s1")}} {
				_, err := normalizeWith(t, img, o)
				if err == nil {
					t.Fatalf("Normalize(%+v) accepted the table", o)
				}
				for _, w := range c.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
			}
			if digest(t, img) != sum {
				t.Error("the refused image was changed")
			}
			if parts, err := readPartitions(t, img); err == nil {
				t.Errorf("ReadPartitions returned %+v", parts)
			}
		})
	}
}

// Issue 11 finding 2 (GPT): an image smaller than two sectors made the old
// ReadPartitions fail reading sector 1 (and the old Normalize rewrote the
// signature of an MBR that cannot hold a partition first), aborting the
// whole image. It is now "none": no table fits, nothing is written.
func TestTinyImage(t *testing.T) {
	for _, size := range []int{0, 511, 512, 1000} {
		img := filepath.Join(t.TempDir(), "tiny.img")
		b := make([]byte, size)
		if size >= 512 {
			b[510], b[511] = 0x55, 0xaa
			e := b[gptspec.MBREntriesOffset:]
			e[gptspec.MBREntryType], e[gptspec.MBREntrySectors] = 0x83, 1
		}
		if err := os.WriteFile(img, b, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := normalizeWith(t, img, NormalizeOptions{RederiveIDs: true, Seed: []byte("s1")})
		if err != nil || r.Table != "none" || len(r.Fields) != 0 {
			t.Errorf("%d bytes: %+v, %v; want none", size, r, err)
		}
		if got := readAll(t, img); !slices.Equal(got, b) {
			t.Errorf("%d bytes: changed", size)
		}
		if parts, err := readPartitions(t, img); err != nil || len(parts) != 0 {
			t.Errorf("%d bytes: ReadPartitions %+v, %v", size, parts, err)
		}
	}
}

// uniqueGUID is what `sgdisk -i N` says partition N's unique GUID is.
func uniqueGUID(t *testing.T, img, n string) string {
	t.Helper()
	m := regexp.MustCompile(`Partition unique GUID: (\S+)`).FindStringSubmatch(disktest.Run(t, "sgdisk", "-i", n, img))
	if m == nil {
		t.Fatalf("sgdisk -i %s printed no unique GUID", n)
	}
	return m[1]
}

// Issue 11 finding 4: the old Normalize always re-derived the disk GUID,
// every partition GUID and the MBR signature, so root=PARTUUID=...,
// /dev/disk/by-partuuid in fstab and efi-vars.fd's boot entries stopped
// matching; sgdisk's random GUIDs and sfdisk's random disk identifier
// changed (and sgdisk's zero protective-MBR signature became non-zero).
// By default they are now kept: the image is not even written.
func TestDefaultKeepsIDs(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	for _, img := range []string{sgdiskImage(t), sfdiskDOS(t)} {
		before, beforeMBR, sum := disktest.Sfdisk(t, img), disktest.Sfdisk(t, "-Y", "dos", img), digest(t, img)
		r, err := normalizeWith(t, img, NormalizeOptions{Seed: []byte("s1")})
		if err != nil || len(r.Fields) != 0 || len(r.Partitions) != 2 {
			t.Fatalf("%s: %+v, %v", before.PartitionTable.Label, r, err)
		}
		if digest(t, img) != sum {
			t.Errorf("%s: the image changed", before.PartitionTable.Label)
		}
		after, afterMBR := disktest.Sfdisk(t, img), disktest.Sfdisk(t, "-Y", "dos", img)
		if after.PartitionTable.ID != before.PartitionTable.ID || afterMBR.PartitionTable.ID != beforeMBR.PartitionTable.ID {
			t.Errorf("disk identifiers %s %s, were %s %s", after.PartitionTable.ID, afterMBR.PartitionTable.ID, before.PartitionTable.ID, beforeMBR.PartitionTable.ID)
		}
		for i, p := range after.PartitionTable.Partitions {
			if p.UUID != before.PartitionTable.Partitions[i].UUID {
				t.Errorf("partition %d GUID %s, was %s", i+1, p.UUID, before.PartitionTable.Partitions[i].UUID)
			}
		}
	}

	// A stale backup is still repaired, from a primary whose GUIDs stay.
	img := sgdiskImage(t)
	guid := uniqueGUID(t, img, "1")
	before := disktest.Sfdisk(t, img)
	poke(t, img, normDisk-33*gptspec.SectorSize, make([]byte, 33*gptspec.SectorSize)...)
	r, err := normalizeWith(t, img, NormalizeOptions{Seed: []byte("s1")})
	if want := []string{"backup GPT header", "backup GPT partition entries"}; err != nil || !slices.Equal(r.Fields, want) {
		t.Fatalf("%+v, %v; want fields %q", r, err, want)
	}
	checkSgdiskV(t, img)
	if got := uniqueGUID(t, img, "1"); got != guid {
		t.Errorf("sgdisk -i 1: unique GUID %s, was %s", got, guid)
	}
	if after := disktest.Sfdisk(t, img); after.PartitionTable.ID != before.PartitionTable.ID {
		t.Errorf("disk GUID %s, was %s", after.PartitionTable.ID, before.PartitionTable.ID)
	}
}
