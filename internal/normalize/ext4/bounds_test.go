package ext4

import (
	"crypto/rand"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// mkfs makes a size-byte ext4 with mkfs.ext4 and the extra options.
func mkfs(t testing.TB, size int64, opts ...string) string {
	t.Helper()
	imagecheck.RequireTool(t, "mkfs.ext4")
	img := filepath.Join(t.TempDir(), "mkfs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	args := append([]string{"-q", "-F", "-b", "4096", "-I", "256", "-E", "root_owner=0:0"}, opts...)
	run(t, "mkfs.ext4", append(args, img)...)
	return img
}

func openRW(t testing.TB, img string) *os.File {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// issue 11 finding 1: the old Normalize checked the filesystem only against
// the file's size, so a superblock claiming more blocks than its partition
// had the backup superblock in group 1 rewritten inside the next partition.
func TestNormalizeStaysInPartition(t *testing.T) {
	img := mkfs(t, 64<<20, "-g", "8192", "-N", "256", "-O", "^has_journal")
	// The filesystem is whole: Normalize accepts it with its own size.
	ok := copyImage(t, img)
	if _, err := Normalize(openRW(t, ok), 0, 64<<20, NormalizeOptions{Time: normTime}); err != nil {
		t.Fatalf("Normalize of the whole filesystem: %v", err)
	}
	// Now it claims 64 MiB in a 32 MiB partition, followed by another
	// partition's data where its group 1 begins.
	f := openRW(t, img)
	other := make([]byte, 32<<20)
	if _, err := rand.Read(other); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(other, 32<<20); err != nil {
		t.Fatal(err)
	}
	sum := imagecheck.SHA256File(t, img)
	_, err := Normalize(f, 0, 32<<20, NormalizeOptions{Time: normTime})
	if err == nil || !strings.Contains(err.Error(), "partition holds") {
		t.Fatalf("Normalize of a filesystem larger than its partition: %v", err)
	}
	if imagecheck.SHA256File(t, img) != sum {
		t.Fatal("a refused Normalize changed the image (partition 2 included)")
	}
}

// issue 11 finding 2: a superblock with 1 block per group and a block count
// whose byte size overflows int64 passed the old checks, and the old load
// allocated the descriptor table for 2^23 groups (512 MiB) from a 1 KiB
// superblock in a sparse file.
func TestNormalizeTinyGroupsBoundedMemory(t *testing.T) {
	src := openRW(t, mkfs(t, 16<<20, "-O", "^has_journal"))
	sb := make([]byte, 1024)
	if _, err := src.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	for _, c := range []struct {
		name           string
		blocks         uint64
		bpg, ipg, want uint32
		refusal        string
	}{
		{"overflowing block count", 1<<51 + 1<<23, 1, 16, 1 << 27, "partition holds"},
		{"8 blocks per group", 131072, 8, 16, 16384 * 16, "implausible geometry"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, f := imagecheck.SparseFile(t, "sb.img", 512<<20)
			b := append([]byte(nil), sb...)
			le.PutUint32(b[0x04:], uint32(c.blocks))
			le.PutUint32(b[0x150:], uint32(c.blocks>>32))
			le.PutUint32(b[0x20:], c.bpg)
			le.PutUint32(b[0x24:], c.bpg) // clusters per group
			le.PutUint32(b[0x28:], c.ipg)
			le.PutUint32(b[0x00:], c.want)
			ext4spec.SetSuperChecksum(b)
			if _, err := f.WriteAt(b, 1024); err != nil {
				t.Fatal(err)
			}
			sum := imagecheck.SHA256File(t, p)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Normalize(f, 0, 512<<20, NormalizeOptions{Time: normTime})
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), c.refusal) {
				t.Errorf("Normalize: %v, want a refusal naming %q", err, c.refusal)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 16<<20 {
				t.Errorf("Normalize allocated %d bytes for a 1 KiB superblock", d)
			}
			if imagecheck.SHA256File(t, p) != sum {
				t.Error("a refused Normalize changed the image")
			}
		})
	}
}

// putNode writes an extent-tree block at blk: depth, and entries whose
// (first logical block, target) come from ent; checksummed with seed.
func putNode(t testing.TB, f *os.File, blk uint64, depth uint16, n int, ent func(i int) (uint32, uint64), seed uint32) {
	t.Helper()
	le := binary.LittleEndian
	b := make([]byte, ext4spec.BlockSize)
	le.PutUint16(b[0:], ext4spec.ExtentMagic)
	le.PutUint16(b[2:], uint16(n))
	le.PutUint16(b[4:], blockMaxEntries)
	le.PutUint16(b[6:], depth)
	for i := 0; i < n; i++ {
		lblk, target := ent(i)
		e := b[12+12*i:]
		le.PutUint32(e[0:], lblk)
		if depth == 0 {
			le.PutUint16(e[4:], 1)
			le.PutUint32(e[8:], uint32(target))
		} else {
			le.PutUint32(e[4:], uint32(target))
		}
	}
	tail := 12 + 12*blockMaxEntries
	le.PutUint32(b[tail:], ext4spec.CRC32C(seed, b[:tail]))
	if _, err := f.WriteAt(b, int64(blk)*ext4spec.BlockSize); err != nil {
		t.Fatal(err)
	}
}

// issue 11 finding 2: the old walkExtents kept no visited set, so a journal
// whose extent tree of depth 5 reuses one node per level (4 x 340^4 paths,
// every checksum valid) kept it walking for hours; now the second visit of
// a node is refused at once.
func TestNormalizeRefusesReusedExtentNodes(t *testing.T) {
	img := mkfs(t, 64<<20)
	f := openRW(t, img)
	le := binary.LittleEndian
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	v, err := loadVolume(f, 0, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	in := make([]byte, ext4spec.InodeSize)
	if err := v.readInode(ext4spec.JournalIno, in); err != nil {
		t.Fatal(err)
	}
	seed := v.seedFor(ext4spec.JournalIno, le.Uint32(in[0x64:]))
	const first = 15000 // free blocks of a fresh 64 MiB filesystem: levels 4..0
	for depth := uint16(4); ; depth-- {
		n, child := blockMaxEntries, uint64(first+5-depth)
		if depth == 0 {
			n, child = 1, 15100
		}
		putNode(t, f, uint64(first+4-depth), depth, n, func(i int) (uint32, uint64) { return uint32(i * 10), child }, seed)
		if depth == 0 {
			break
		}
	}
	root := in[0x28:0x64]
	clear(root)
	le.PutUint16(root[0:], ext4spec.ExtentMagic)
	le.PutUint16(root[2:], 4)
	le.PutUint16(root[4:], 4)
	le.PutUint16(root[6:], 5)
	for i := 0; i < 4; i++ {
		le.PutUint32(root[12+12*i:], uint32(i*10))
		le.PutUint32(root[12+12*i+4:], first)
	}
	ext4spec.SetInodeChecksum(in, v.fsSeed, ext4spec.JournalIno)
	grp := uint32(ext4spec.JournalIno-1) / v.ipg
	it := descU64(v.desc(grp), 0x08, 0x28)
	if _, err := f.WriteAt(in, int64(it)*ext4spec.BlockSize+int64((ext4spec.JournalIno-1)%v.ipg)*ext4spec.InodeSize); err != nil {
		t.Fatal(err)
	}
	sum := imagecheck.SHA256File(t, img)
	done := make(chan error, 1)
	go func() {
		_, err := Normalize(f, 0, 64<<20, NormalizeOptions{Time: normTime})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "reached twice") {
			t.Fatalf("Normalize: %v, want the reused node refused", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Normalize still walking a reused extent tree after 10 s")
	}
	if imagecheck.SHA256File(t, img) != sum {
		t.Error("a refused Normalize changed the image")
	}
}
