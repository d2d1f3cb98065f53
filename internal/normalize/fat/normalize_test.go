package fat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	fatw "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/fat"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fattest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// normTime has an odd second, so the creation 10 ms field is exercised.
var normTime = time.Date(2024, 5, 6, 12, 34, 57, 0, time.UTC).Unix()

func normRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writerImage returns a new sparse image of size bytes that holds, at
// offset, the filesystem our Writer (internal/fs/fat) makes of tree with
// opts: an ESP as the builder writes it.
func writerImage(t *testing.T, size, offset int64, opts fatw.Options, tree []fattest.Entry) string {
	t.Helper()
	p, f := imagecheck.SparseFile(t, "disk.img", size)
	defer f.Close()
	w, err := fatw.NewWriter(f, offset, opts)
	if err != nil {
		t.Fatal(err)
	}
	fattest.Write(t, w, func(e fattest.Entry) fatw.Header {
		return fatw.Header{Name: e.Name, Mode: e.Mode, Mtime: e.Mtime, Size: int64(len(e.Data))}
	}, tree)
	return p
}

// normRun normalises the filesystem at offset, which owns the rest of p.
func normRun(t testing.TB, p string, offset int64, tm int64) NormalizeReport {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Normalize(f, offset, fi.Size()-offset, NormalizeOptions{Time: tm})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// normGuestOps changes an image the way a boot loader install does, through a
// real FAT driver (mtools): new directory and files with long names,
// temporary files with a random suffix (as bootctl makes) created and
// deleted, one in the middle of the directory and one at its end, a file
// replaced, files deleted.
func normGuestOps(t testing.TB, spec, src, random string) {
	t.Helper()
	local := func(name, content string) string {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	grub := local("grubx64.efi", strings.Repeat("grub", 5000))
	tmp := local("tmp", "temporary\n")
	cfg := local("loader.conf", "timeout 3\n")
	fattest.Mtools(t, "mmd", "-i", spec, "::/EFI/grub")
	fattest.Mtools(t, "mcopy", "-i", spec, tmp, "::/EFI/grub/.grubx64.efi."+random)
	fattest.Mtools(t, "mcopy", "-i", spec, grub, "::/EFI/grub/grubx64.efi")
	fattest.Mtools(t, "mdel", "-i", spec, "::/EFI/grub/.grubx64.efi."+random)
	// Too long for the hole just left, so it goes last.
	long := "::/EFI/grub/.grub-installer-state." + random + random + random
	fattest.Mtools(t, "mcopy", "-i", spec, tmp, long)
	fattest.Mtools(t, "mdel", "-i", spec, long)
	fattest.Mtools(t, "mcopy", "-D", "o", "-i", spec, cfg, "::/loader/loader.conf")
	fattest.Mtools(t, "mdel", "-i", spec, "::/README.TXT")
	fattest.Mtools(t, "mdel", "-i", spec, "::/loader/entries/nixos-generation-1.conf")
	fattest.Mtools(t, "mcopy", "-i", spec, cfg, "::/grub.cfg")
	// A random file deleted leaves its bytes in a free cluster, as
	// systemd-boot's random seed does when an image drops it.
	seed := local("random-seed", strings.Repeat(random, 6))
	fattest.Mtools(t, "mcopy", "-i", spec, seed, "::/loader/old-seed")
	fattest.Mtools(t, "mdel", "-i", spec, "::/loader/old-seed")
}

func TestNormalizeMtools(t *testing.T) {
	const size, offset = 64 << 20, 1 << 20
	a := writerImage(t, offset+size, offset, fatw.Options{Size: size, Label: "ESP", VolumeID: 9, Time: fattest.Time}, fattest.ESPTree(1<<20))
	b := filepath.Join(t.TempDir(), "b.img")
	if err := os.WriteFile(b, normRead(t, a), 0o644); err != nil {
		t.Fatal(err)
	}
	specA, specB := fmt.Sprintf("%s@@%d", a, offset), fmt.Sprintf("%s@@%d", b, offset)
	normGuestOps(t, specA, t.TempDir(), "3f9a2c")
	time.Sleep(2100 * time.Millisecond) // FAT write times have 2 s resolution
	normGuestOps(t, specB, t.TempDir(), "b71e05")
	if bytes.Equal(normRead(t, a), normRead(t, b)) {
		t.Fatal("the copies are identical before Normalize; the test proves nothing")
	}
	names := string(fattest.Mtools(t, "mdir", "-/", "-b", "-i", specA, "::"))

	ra, rb := normRun(t, a, offset, normTime), normRun(t, b, offset, normTime)
	if ra != rb {
		t.Errorf("reports differ: %+v, %+v", ra, rb)
	}
	if ra.TimesChanged == 0 || ra.Cleared == 0 || ra.FreeCleared == 0 || !ra.FSInfoFixed {
		t.Errorf("report %+v: want changed times, cleared slots and free clusters, and fixed FSInfo", ra)
	}
	t.Logf("report: %+v", ra)
	imgA := normRead(t, a)
	if i := mismatch(imgA, normRead(t, b)); i >= 0 {
		t.Fatalf("normalised images differ at byte %d (filesystem offset %d)", i, int64(i)-offset)
	}

	fattest.FsckVfat(t, a, offset, size)
	if got := string(fattest.Mtools(t, "mdir", "-/", "-b", "-i", specA, "::")); got != names {
		t.Errorf("entries changed:\nbefore\n%s\nafter\n%s", names, got)
	}
	if got := fattest.Mtools(t, "mcopy", "-n", "-i", specA, "::/EFI/grub/grubx64.efi", "-"); string(got) != strings.Repeat("grub", 5000) {
		t.Errorf("grubx64.efi reads back %d bytes", len(got))
	}
	// Every listed entry, . and .. included, shows the normalised time.
	want := time.Unix(normTime, 0).UTC().Format("2006-01-02  15:04")
	dates := regexp.MustCompile(`\d{4}-\d\d-\d\d +\d+:\d\d`).FindAllString(string(fattest.Mtools(t, "mdir", "-/", "-a", "-i", specA, "::")), -1)
	if len(dates) < ra.Entries-1 { // the label has no listing line
		t.Errorf("mdir shows %d dates for %d entries", len(dates), ra.Entries)
	}
	for _, d := range dates {
		if d != want {
			t.Errorf("mdir shows %q, want %q", d, want)
			break
		}
	}

	again := normRun(t, a, offset, normTime)
	if again != (NormalizeReport{Entries: ra.Entries}) {
		t.Errorf("second Normalize: %+v, want no changes", again)
	}
	if !bytes.Equal(normRead(t, a), imgA) {
		t.Error("second Normalize changed the image")
	}
}

// A Writer image whose entries all have Time is already normal; the side
// effects a driver leaves (dirty bits, FSInfo hints, a disagreeing FAT[1]) are
// undone to exactly the Writer's bytes.
func TestNormalizeWriterImage(t *testing.T) {
	const size = 64 << 20
	tree := fattest.ESPTree(1 << 20)
	for i := range tree {
		tree[i].Mtime = normTime
	}
	p := writerImage(t, size, 0, fatw.Options{Size: size, Label: "ESP", VolumeID: 3, Time: normTime}, tree)
	orig := normRead(t, p)
	rep := normRun(t, p, 0, normTime)
	if rep.Entries == 0 || rep != (NormalizeReport{Entries: rep.Entries}) {
		t.Errorf("Normalize of a normal image: %+v", rep)
	}
	if !bytes.Equal(normRead(t, p), orig) {
		t.Fatal("Normalize changed a normal image")
	}

	img := bytes.Clone(orig)
	fatSecs := int64(le.Uint32(img[36:]))
	img[65] |= 1                       // Linux: mounted
	le.PutUint32(img[512+488:], 12345) // FSInfo free count
	le.PutUint32(img[512+492:], 77)    // next-free hint
	// Windows: not cleanly unmounted, and a copy that disagrees.
	le.PutUint32(img[32*512+4:], 0x03FFFFFF)
	le.PutUint32(img[(32+fatSecs)*512+4:], 0x07FFFFFF)
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	rep = normRun(t, p, 0, normTime)
	if !rep.FSInfoFixed || !rep.BootFixed || rep.TimesChanged != 0 || rep.Cleared != 0 {
		t.Errorf("report %+v", rep)
	}
	if i := mismatch(normRead(t, p), orig); i >= 0 {
		t.Errorf("differs from the Writer's image at byte %d", i)
	}
}

func TestNormalizeRefuses(t *testing.T) {
	imagecheck.RequireTool(t, "mkfs.vfat")
	t.Run("FAT16", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "fat16.img")
		if out, err := exec.Command("mkfs.vfat", "-F", "16", "-C", p, "65536").CombinedOutput(); err != nil {
			t.Fatalf("mkfs.vfat: %v\n%s", err, out)
		}
		normRefuse(t, p, ErrNotFAT32, "fixed root directory of 512 entries")
	})
	t.Run("NoBootSector", func(t *testing.T) {
		p, _ := imagecheck.SparseFile(t, "disk.img", 1<<20)
		normRefuse(t, p, ErrNotFAT32, "no boot sector signature")
	})

	// Damage a Writer image with b (filesystem bytes, FAT size in sectors).
	damaged := func(t *testing.T, damage func(b []byte, fatSecs int64)) string {
		const size = 64 << 20
		p := writerImage(t, size, 0, fatw.Options{Size: size, Time: fattest.Time}, fattest.ESPTree(1<<10))
		b := normRead(t, p)
		damage(b, int64(binary.LittleEndian.Uint32(b[36:])))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("FATsDiffer", func(t *testing.T) {
		p := damaged(t, func(b []byte, fatSecs int64) { b[(32+fatSecs)*512+5*4] ^= 1 })
		normRefuse(t, p, nil, "FAT 1 and FAT 2 differ at cluster 5")
	})
	t.Run("LoopingRoot", func(t *testing.T) {
		p := damaged(t, func(b []byte, fatSecs int64) {
			for _, fat := range []int64{32, 32 + fatSecs} {
				binary.LittleEndian.PutUint32(b[fat*512+2*4:], 2)
			}
		})
		normRefuse(t, p, nil, "cluster 2 already in use")
	})
}

// normRefuse checks Normalize fails with is (if not nil) and msg, leaving the
// image as it was.
func normRefuse(t *testing.T, p string, is error, msg string) {
	t.Helper()
	before := normRead(t, p)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Normalize(f, 0, int64(len(before)), NormalizeOptions{Time: normTime})
	switch {
	case err == nil:
		t.Fatal("Normalize accepted the image")
	case is != nil && !errors.Is(err, is):
		t.Errorf("error %q is not %q", err, is)
	case !strings.Contains(err.Error(), msg):
		t.Errorf("error %q lacks %q", err, msg)
	}
	t.Logf("refused: %v", err)
	if !bytes.Equal(normRead(t, p), before) {
		t.Error("a refused image was changed")
	}
}
