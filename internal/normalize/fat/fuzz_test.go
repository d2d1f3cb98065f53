package fat

import (
	"bytes"
	"encoding/binary"
	"flag"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	fatw "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/fat"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fattest"
)

// FuzzNormalize edits real FAT32 images, its bases: one our Writer makes
// and the committed testdata/*.fatimg, which mkfs.vfat made and mtools
// changed (fuzzBases). A base is a partition size and its nonzero
// sectors, all else holes. The fuzz input stays small so that Go's
// minimiser (quadratic in the input's length) stays fast:
//
//	in[0]      which base
//	in[1:3]    int16 KiB added to the partition's size (it may then be
//	           smaller than the filesystem)
//	in[3:]     edits: a uint16 position in the base's sectors laid end to
//	           end, a length n, n bytes
//
// The partition lies in a memfd between two guards of nonzero bytes.
const (
	fuzzGuard   = 4096
	fuzzMaxPart = 300 << 20
	fuzzAlloc   = 16 << 20 // the most one Normalize may allocate here
)

var writeSeeds = flag.Bool("fat.write-seeds", false, "remake testdata/*.fatimg with mkfs.vfat and mtools")

type fuzzBase struct {
	size    int64
	sectors []int64 // sector numbers
	data    []byte  // their bytes, 512 each
}

// encodeBase stores img's nonzero sectors: the size in KiB (uint32),
// then a sector number (uint32), a length n (uint16) and the sector's
// first n bytes, the rest zero, for each.
func encodeBase(img []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, uint32((len(img)+1023)>>10))
	for s := 0; s+512 <= len(img); s += 512 {
		if b := bytes.TrimRight(img[s:s+512], "\x00"); len(b) > 0 {
			out = binary.LittleEndian.AppendUint32(out, uint32(s/512))
			out = binary.LittleEndian.AppendUint16(out, uint16(len(b)))
			out = append(out, b...)
		}
	}
	return out
}

func decodeBase(t testing.TB, in []byte) fuzzBase {
	b := fuzzBase{size: int64(binary.LittleEndian.Uint32(in)) << 10}
	for in = in[4:]; len(in) > 0; {
		n := int(binary.LittleEndian.Uint16(in[4:]))
		if n > 512 || len(in) < 6+n {
			t.Fatalf("bad base record")
		}
		b.sectors = append(b.sectors, int64(binary.LittleEndian.Uint32(in)))
		b.data = append(append(b.data, in[6:6+n]...), make([]byte, 512-n)...)
		in = in[6+n:]
	}
	return b
}

var (
	basesOnce sync.Once
	bases     []fuzzBase
)

func fuzzBases(t testing.TB) []fuzzBase {
	basesOnce.Do(func() {
		bases = append(bases, decodeBase(t, writerBase(t)))
		for _, name := range []string{"mkfs-512", "mkfs-4096"} {
			b, err := os.ReadFile(filepath.Join("testdata", name+".fatimg"))
			if err != nil {
				t.Fatal(err)
			}
			bases = append(bases, decodeBase(t, b))
		}
	})
	if len(bases) != 3 {
		t.Fatal("the fuzz bases did not load")
	}
	return bases
}

// fuzzFile lays out the base in[0] chooses, edited, in a new sparse
// in-memory file (memfd, on tmpfs): guard, partition, guard. It returns
// the partition's size.
func fuzzFile(t testing.TB, in []byte) (*os.File, int64) {
	in = append(in, make([]byte, max(0, 3-len(in)))...)
	all := fuzzBases(t)
	b := all[int(in[0])%len(all)]
	size := min(max(b.size+int64(int16(binary.LittleEndian.Uint16(in[1:])))<<10, 1<<10), fuzzMaxPart)
	data := bytes.Clone(b.data)
	for in = in[3:]; len(in) >= 3; {
		at, n := int(binary.LittleEndian.Uint16(in))%len(data), min(int(in[2]), len(in)-3)
		copy(data[at:], in[3:3+n])
		in = in[3+n:]
	}

	fd, err := unix.MemfdCreate("fat-fuzz", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "fat-fuzz")
	t.Cleanup(func() { f.Close() })
	write := func(p []byte, at int64) {
		if _, err := f.WriteAt(p, at); err != nil {
			t.Fatal(err)
		}
	}
	guard := bytes.Repeat([]byte{0xA5}, fuzzGuard)
	write(guard, 0)
	write(guard, fuzzGuard+size)
	for i, s := range b.sectors {
		if s < size/512 {
			write(data[i*512:(i+1)*512], fuzzGuard+s*512)
		}
	}
	return f, size
}

// snapshot returns f's nonzero sectors, reading only its data.
func snapshot(t *testing.T, f *os.File) map[int64]string {
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	v := &volume{f: f, end: fi.Size()}
	m := map[int64]string{}
	buf := make([]byte, 64<<10)
	err = v.dataRuns(0, v.end, func(a, b int64) error {
		for a = a &^ 511; a < b; a += int64(len(buf)) {
			p := buf[:min(int64(len(buf)), v.end-a)]
			if err := v.readAt(p, a); err != nil {
				return err
			}
			for s := 0; s+512 <= len(p); s += 512 {
				if !allZero(p[s : s+512]) {
					m[a+int64(s)] = string(p[s : s+512])
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// FuzzNormalize checks that Normalize writes nothing outside its
// partition (the guards), leaves a refused one byte-identical, is a no-op
// the second time (reporting only Entries) and allocates at most
// fuzzAlloc.
func FuzzNormalize(f *testing.F) {
	if *writeSeeds {
		for name, img := range mkfsBases(f) {
			if err := os.WriteFile(filepath.Join("testdata", name+".fatimg"), encodeBase(img), 0o644); err != nil {
				f.Fatal(err)
			}
		}
	}
	for i := range len(fuzzBases(f)) {
		f.Add([]byte{byte(i), 0, 0})
		f.Add([]byte{byte(i), 0, 0xF0})              // a partition 4 MiB too small
		f.Add([]byte{byte(i), 0, 0, 34, 0, 1, 0x02}) // a BPB claiming 65536 sectors more
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		file, size := fuzzFile(t, in)
		before := snapshot(t, file)
		var rep NormalizeReport
		var err error
		alloc, _ := measure(t, func() { rep, _, err = normalize(file, fuzzGuard, size, NormalizeOptions{Time: normTime}) })
		if alloc > fuzzAlloc {
			t.Errorf("Normalize allocated %d bytes", alloc)
		}
		after := snapshot(t, file)
		for _, at := range []int64{0, fuzzGuard + size} {
			for s := at; s < at+fuzzGuard; s += 512 {
				if after[s] != before[s] {
					t.Fatalf("Normalize wrote outside its partition, at %d", s)
				}
			}
		}
		if err != nil {
			if !maps.Equal(before, after) {
				t.Fatalf("refused (%v) but changed", err)
			}
			return
		}
		again, _, err := normalize(file, fuzzGuard, size, NormalizeOptions{Time: normTime})
		if err != nil || again != (NormalizeReport{Entries: rep.Entries}) {
			t.Fatalf("second Normalize: %+v, %v after %+v", again, err, rep)
		}
		if !maps.Equal(after, snapshot(t, file)) {
			t.Fatal("second Normalize changed the image")
		}
	})
}

// writerBase is the smallest ESP our Writer makes (512-byte clusters) of
// fattest.ESPTree with small files, then changed as a driver would: dirty bit, stale FSInfo hints.
func writerBase(t testing.TB) []byte {
	size := fatw.MinSize(512)
	p := filepath.Join(t.TempDir(), "w.img")
	fl, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	if err := fl.Truncate((size + 1023) &^ 1023); err != nil {
		t.Fatal(err)
	}
	w, err := fatw.NewWriter(fl, 0, fatw.Options{Size: size, ClusterSize: 512, Label: "ESP", VolumeID: 7, Time: fattest.Time})
	if err != nil {
		t.Fatal(err)
	}
	tree := fattest.ESPTree(600)
	for i := range tree { // its names and layout, not its megabytes
		tree[i].Data = tree[i].Data[:min(len(tree[i].Data), 600)]
	}
	fattest.Write(t, w, func(e fattest.Entry) fatw.Header {
		return fatw.Header{Name: e.Name, Mode: e.Mode, Mtime: e.Mtime, Size: int64(len(e.Data))}
	}, tree)
	img := normRead(t, p)
	img[65] |= 1
	le.PutUint32(img[512+488:], 5)
	return encodeBase(img)
}

// mkfsBases makes the committed bases: the smallest FAT32 mkfs.vfat makes
// with 512-byte sectors and clusters (65525 clusters; mtools reads fewer
// as FAT12/16), and one with 4096-byte sectors, each changed through
// mtools.
func mkfsBases(t testing.TB) map[string][]byte {
	out := map[string][]byte{}
	for name, args := range map[string][]string{
		"mkfs-512":  {"-S", "512", "-s", "1", "-n", "ESP"},
		"mkfs-4096": {"-S", "4096", "-s", "1"},
	} {
		kib := int64(33 << 10)
		if name == "mkfs-4096" {
			kib = 257 << 10
		}
		p := mkfsFAT32(t, kib, args...)
		seedOps(t, p)
		if out, err := exec.Command("fsck.vfat", "-n", p).CombinedOutput(); err != nil {
			t.Fatalf("fsck.vfat: %v\n%s", err, out)
		}
		out[name] = normRead(t, p)
	}
	return out
}

// seedOps fills a new FAT32 through mtools: directories, files with long
// and short names, a file replaced and files deleted, leaving deleted
// entries and free clusters with data.
func seedOps(t testing.TB, p string) {
	dir := t.TempDir()
	local := func(name string, data []byte) string {
		l := filepath.Join(dir, name)
		if err := os.WriteFile(l, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return l
	}
	kernel := local("k", fattest.Random(1, 300))
	conf := local("c", []byte("timeout 3\n"))
	fattest.Mtools(t, "mmd", "-i", p, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries")
	fattest.Mtools(t, "mcopy", "-i", p, kernel, "::/EFI/BOOT/BOOTX64.EFI")
	fattest.Mtools(t, "mcopy", "-i", p, conf, "::/loader/loader.conf")
	fattest.Mtools(t, "mcopy", "-i", p, conf, "::/loader/entries/nixos-generation-1.conf")
	fattest.Mtools(t, "mcopy", "-i", p, kernel, "::/loader/random-seed")
	fattest.Mtools(t, "mcopy", "-i", p, conf, "::/EFI/BOOT/.tmp-install-5eed01")
	fattest.Mtools(t, "mdel", "-i", p, "::/EFI/BOOT/.tmp-install-5eed01")
	fattest.Mtools(t, "mdel", "-i", p, "::/loader/random-seed")
	fattest.Mtools(t, "mcopy", "-D", "o", "-i", p, kernel, "::/loader/loader.conf")
}

// The bases are real FAT32s that Normalize accepts and changes, laid out
// as the fuzz target lays them out.
func TestFuzzBasesNormalize(t *testing.T) {
	for i := range len(fuzzBases(t)) {
		file, size := fuzzFile(t, []byte{byte(i), 0, 0})
		rep, _, err := normalize(file, fuzzGuard, size, NormalizeOptions{Time: normTime})
		want := rep.TimesChanged > 0 && rep.FSInfoFixed
		if i > 0 { // mtools deleted entries and a file
			want = want && rep.FreeCleared > 0 && rep.Cleared > 0
		}
		if err != nil || !want {
			t.Errorf("base %d: %+v, %v; want times, FSInfo and (mkfs) free slots and clusters changed", i, rep, err)
		}
	}
}
