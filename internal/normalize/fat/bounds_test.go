package fat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fattest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// Issue 11 finding 1: a FAT32 whose BPB claims 128 MiB inside a 64 MiB ESP,
// followed by a partition of nonzero bytes. The old Normalize knew only
// the partition start: it took the clusters past the ESP's end for free
// ones, found partition 2's bytes there and zeroed them (and rewrote the
// ESP besides). Now the filesystem must fit in its partition or is left
// alone, both partitions byte-identical.
func TestNormalizeStaysInPartition(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "mkfs.vfat", "mcopy", "mdel")
	const mib = 1 << 20
	// guestOps leaves times to rewrite and a deleted file's data to zero.
	guestOps := func(t *testing.T, p string) {
		src := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(src, bytes.Repeat([]byte("kernel"), 3000), 0o644); err != nil {
			t.Fatal(err)
		}
		fattest.Mtools(t, "mcopy", "-i", p, src, "::/KEEP.BIN")
		fattest.Mtools(t, "mcopy", "-i", p, src, "::/GONE.BIN")
		fattest.Mtools(t, "mdel", "-i", p, "::/GONE.BIN")
	}
	for _, tc := range []struct {
		name string
		fs   func(t *testing.T) string // a filesystem whose first 64 MiB go in the ESP
	}{
		{"TotalSectorsDoubled", func(t *testing.T) string {
			// The FAT maps 64 KiB more than 64 MiB: the old code's clamp
			// to the FAT's entries still reached into partition 2.
			p := mkfsFAT32(t, 64<<10)
			guestOps(t, p)
			patchFile(t, p, 32, 4, func(b []byte) { le.PutUint32(b, 2*le.Uint32(b)) })
			return p
		}},
		{"MadeFor128MiB", func(t *testing.T) string {
			p := mkfsFAT32(t, 128<<10)
			guestOps(t, p)
			return p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Partition 2 covers all that the 128 MiB filesystem claims
			// past the ESP, so every read the old code made succeeded.
			disk, f := imagecheck.SparseFile(t, "disk.img", 138*mib)
			out, err := exec.Command("sgdisk", "-n", "1:2048:+64M", "-t", "1:ef00", "-n", "2:0:+72M", disk).CombinedOutput()
			if err != nil {
				t.Fatalf("sgdisk: %v\n%s", err, out)
			}
			start1, size1 := sgdiskExtent(t, disk, 1)
			start2, size2 := sgdiskExtent(t, disk, 2)
			if size1 != 64*mib || start2 < start1+size1 {
				t.Fatalf("sgdisk made partitions at %d+%d and %d+%d", start1, size1, start2, size2)
			}
			if _, err := f.WriteAt(normRead(t, tc.fs(t))[:size1], start1); err != nil {
				t.Fatal(err)
			}
			block := fattest.Random(11, mib)
			for off := int64(0); off < size2; off += mib {
				if _, err := f.WriteAt(block, start2+off); err != nil {
					t.Fatal(err)
				}
			}
			sum1, sum2 := rangeSum(t, disk, start1, size1), rangeSum(t, disk, start2, size2)
			whole := rangeSum(t, disk, 0, 138*mib)

			_, err = Normalize(f, start1, size1, NormalizeOptions{Time: normTime})
			if !errors.Is(err, ErrNotFAT32) || !strings.Contains(err.Error(), "do not fit in the 67108864 bytes of the partition") {
				t.Errorf("Normalize: %v, want a refusal of a filesystem larger than its partition", err)
			}
			if rangeSum(t, disk, start2, size2) != sum2 {
				t.Error("partition 2 changed")
			}
			if rangeSum(t, disk, start1, size1) != sum1 {
				t.Error("the ESP changed although it was left alone")
			}
			if rangeSum(t, disk, 0, 138*mib) != whole {
				t.Error("the disk changed")
			}
		})
	}
}

var sgdiskSector = regexp.MustCompile(`(?m)^(First|Last) sector: (\d+) `)

// sgdiskExtent returns partition n's byte offset and size as sgdisk says.
func sgdiskExtent(t *testing.T, disk string, n int) (int64, int64) {
	t.Helper()
	out, err := exec.Command("sgdisk", "-i", strconv.Itoa(n), disk).CombinedOutput()
	m := sgdiskSector.FindAllSubmatch(out, -1)
	if err != nil || len(m) != 2 {
		t.Fatalf("sgdisk -i %d: %v\n%s", n, err, out)
	}
	first, _ := strconv.ParseInt(string(m[0][2]), 10, 64)
	last, _ := strconv.ParseInt(string(m[1][2]), 10, 64)
	return first * 512, (last - first + 1) * 512
}

// claimFAT lays out, in a new sparse file, mkfs.vfat's 64 MiB FAT32
// (512-byte sectors and clusters) re-sized to a FAT of fatSecs sectors
// that maps as many clusters as it can: the BPB, FSInfo and backups, both
// FATs' first sector and the root directory are real, all else is holes.
func claimFAT(t *testing.T, fatSecs int64) (string, int64) {
	src := mkfsFAT32(t, 64<<10)
	g := bpb(t, src, 0)
	img := normRead(t, src)
	clusters := fatSecs*128 - 2
	total := g.reserved + 2*fatSecs + clusters
	p, f := imagecheck.SparseFile(t, "claim.img", total*512)
	head := bytes.Clone(img[:g.reserved*512])
	for _, s := range []int64{0, 6} { // the boot sector and its backup
		le.PutUint32(head[s*512+32:], uint32(total))
		le.PutUint32(head[s*512+36:], uint32(fatSecs))
	}
	fat := img[g.reserved*512 : g.reserved*512+512]
	root := img[g.dataOff : g.dataOff+512]
	for _, w := range []struct {
		at int64
		b  []byte
	}{{0, head}, {g.reserved * 512, fat}, {(g.reserved + fatSecs) * 512, fat}, {(g.reserved + 2*fatSecs) * 512, root}} {
		if _, err := f.WriteAt(w.b, w.at); err != nil {
			t.Fatal(err)
		}
	}
	return p, total * 512
}

// Issue 11 finding 2: the old code read the FAT whole into memory, as big
// as the BPB said, then every free cluster one by one, holes included.
func TestNormalizeBounded(t *testing.T) {
	run := func(t *testing.T, p string, size int64) (NormalizeReport, *volume, error, int64, int64) {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var rep NormalizeReport
		var v *volume
		alloc, read := measure(t, func() { rep, v, err = normalize(f, 0, size, NormalizeOptions{Time: normTime}) })
		t.Logf("allocated %d bytes, read %d (%d through the accessor): %v", alloc, read, v.nread, err)
		return rep, v, err, alloc, read
	}
	const maxAlloc, maxRead = 16 << 20, 32 << 20

	// A 256 MiB FAT (64M clusters in a 32 GiB sparse file): the old code
	// allocated and read all of it; now refused above maxFATBytes
	// before anything big is allocated.
	t.Run("HugeFAT", func(t *testing.T) {
		p, size := claimFAT(t, 1<<19)
		before := rangeSum(t, p, 0, 4<<20)
		_, _, err, alloc, read := run(t, p, size)
		if !errors.Is(err, ErrNotFAT32) || !strings.Contains(err.Error(), fmt.Sprintf("more than the %d this normaliser reads", maxFATBytes)) {
			t.Errorf("Normalize: %v, want a refusal of the FAT's size", err)
		}
		if alloc > maxAlloc || read > maxRead {
			t.Errorf("allocated %d bytes and read %d to refuse it", alloc, read)
		}
		if rangeSum(t, p, 0, 4<<20) != before {
			t.Error("a refused image changed")
		}
	})
	// A 48 MiB FAT, inside the limit, whose entries are holes (12M free
	// clusters, 6 GiB of them): the old code allocated 48 MiB and read 6
	// GiB of free clusters 512 bytes at a time; now both follow the
	// few sectors that hold data.
	t.Run("SparseFAT", func(t *testing.T) {
		p, size := claimFAT(t, 96<<10)
		rep, v, err, alloc, read := run(t, p, size)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.FSInfoFixed || v.clusters != 96<<10*128-2 {
			t.Errorf("report %+v for %d clusters, want the FSInfo free count fixed", rep, v.clusters)
		}
		if alloc > maxAlloc || read > maxRead || v.nread > 1<<20 {
			t.Errorf("allocated %d bytes and read %d (%d through the accessor)", alloc, read, v.nread)
		}
	})
	// What mkfs.vfat makes of a sparse 4 GiB file (1M clusters of 4 KiB,
	// two 4 MiB FATs it writes out), with a file and a deleted one: the
	// old code read all 4 GiB; now the FATs and the few clusters with data.
	t.Run("Sparse4GiB", func(t *testing.T) {
		p := mkfsFAT32(t, 4<<20)
		spec := p + "@@0"
		src := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(src, bytes.Repeat([]byte("initrd"), 20000), 0o644); err != nil {
			t.Fatal(err)
		}
		fattest.Mtools(t, "mcopy", "-i", spec, src, "::/KEEP.BIN")
		fattest.Mtools(t, "mcopy", "-i", spec, src, "::/GONE.BIN")
		fattest.Mtools(t, "mdel", "-i", spec, "::/GONE.BIN")
		rep, v, err, alloc, read := run(t, p, 4<<30)
		if err != nil {
			t.Fatal(err)
		}
		if rep.FreeCleared != 30 || rep.Entries != 1 { // 120000 bytes in 4 KiB clusters
			t.Errorf("report %+v, want 30 free clusters cleared and one entry", rep)
		}
		if alloc > maxAlloc || read > maxRead || v.nread > maxRead {
			t.Errorf("allocated %d bytes and read %d (%d through the accessor)", alloc, read, v.nread)
		}
		fattest.FsckVfat(t, p, 0, 4<<30)
		if got := fattest.Mtools(t, "mtype", "-i", spec, "::/KEEP.BIN"); !bytes.Equal(got, normRead(t, src)) {
			t.Error("KEEP.BIN changed")
		}
	})
}
