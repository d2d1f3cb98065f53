package fat

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

const testTime = 1700000000 // 2023-11-14 22:13:20 UTC

func requireTool(t testing.TB, name string) { t.Helper(); imagecheck.RequireTool(t, name) }

// newImage creates a sparse file of size bytes.
func newImage(t testing.TB, size int64) (string, *os.File) {
	t.Helper()
	return imagecheck.SparseFile(t, "disk.img", size)
}

// entry is one item of a test tree; short is the expected 8.3 name of its
// last component ("" = not checked).
type entry struct {
	dir   bool
	h     Header
	data  []byte
	short string
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

// espTree is what systemd-boot and NixOS put on an ESP, plus the corner
// cases: long names that collide in 8.3, an exact 8.3 name, mixed case,
// non-ASCII, spaces, an empty file, a nested empty directory and a file
// with zero pages in the middle (written as holes).
func espTree(kernelSize int) []entry {
	const hash = "0123456789abcdfghijklmnpqrsvwxyz"
	sparse := random(7, 64<<10)
	clear(sparse[8192 : 8192+40000])
	d := func(name, short string) entry {
		return entry{dir: true, h: Header{Name: name, Mtime: testTime}, short: short}
	}
	f := func(name, short string, data []byte) entry {
		return entry{h: Header{Name: name, Mode: 0o644, Mtime: testTime + 1, Size: int64(len(data))}, data: data, short: short}
	}
	return []entry{
		d("EFI", "EFI"),
		d("EFI/BOOT", "BOOT"),
		f("EFI/BOOT/BOOTX64.EFI", "BOOTX64.EFI", random(1, 1536<<10)),
		d("EFI/Linux", "LINUX"),
		d("EFI/nixos", "NIXOS"),
		f("EFI/nixos/"+hash+"-initrd-linux-6.1-initrd.efi", "012345~1.EFI", random(2, 3<<20)),
		f("EFI/nixos/"+hash+"-linux-6.1-bzImage.efi", "012345~2.EFI", random(3, kernelSize)),
		d("EFI/systemd", "SYSTEMD"),
		f("EFI/systemd/systemd-bootx64.efi", "SYSTEM~1.EFI", random(4, 90<<10)),
		d("empty", "EMPTY"),
		d("empty/nested", "NESTED"),
		d("empty/nested/dir", "DIR"),
		d("loader", "LOADER"),
		d("loader/entries", "ENTRIES"),
		f("loader/entries/nixos-generation-1.conf", "NIXOS-~1.CON", []byte("title NixOS\nversion Generation 1\nlinux /EFI/nixos/x.efi\n")),
		f("loader/entries/nixos-generation-10.conf", "NIXOS-~2.CON", []byte("title NixOS\nversion Generation 10\n")),
		f("loader/entries/nixos-generation-2.conf", "NIXOS-~3.CON", []byte("title NixOS\nversion Generation 2\n")),
		f("loader/loader.conf", "LOADER~1.CON", []byte("timeout 5\ndefault nixos-generation-2.conf\n")),
		f("loader/random-seed", "RANDOM~1", nil),
		f("README.TXT", "README.TXT", []byte("exact 8.3 name\n")),
		f("Readme2.txt", "README2.TXT", []byte("mixed case, fits 8.3\n")),
		f("My File.txt", "MYFILE~1.TXT", []byte("space\n")),
		f("sparse.bin", "SPARSE.BIN", sparse),
		f("über.txt", "_BER~1.TXT", []byte("non-ASCII\n")),
	}
}

// write builds tree into f at offset with opts.
func write(t testing.TB, f *os.File, offset int64, opts Options, tree []entry) {
	t.Helper()
	w, err := NewWriter(f, offset, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tree {
		if e.dir {
			if err := w.Mkdir(e.h); err != nil {
				t.Fatal(err)
			}
			continue
		}
		fw, err := w.Create(e.h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(fw, bytes.NewReader(e.data)); err != nil {
			t.Fatalf("%s: %v", e.h.Name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

var fsckSummary = regexp.MustCompile(`^\S+: \d+ files, \d+/\d+ clusters$`)

// fsckVfat runs `fsck.vfat -n` on the filesystem at img[offset:offset+size]
// (copied out when offset != 0: fsck.vfat has no offset option) and fails
// on a non-zero exit or any line but the banner and the summary. It returns
// the `-vn` output.
func fsckVfat(t testing.TB, img string, offset, size int64) string {
	t.Helper()
	requireTool(t, "fsck.vfat")
	if offset != 0 {
		img = extract(t, img, offset, size)
	}
	out, err := exec.Command("fsck.vfat", "-n", img).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[0], "fsck.fat ") || !fsckSummary.MatchString(lines[1]) {
		t.Fatalf("fsck.vfat -n %s: %v\n%s", img, err, out)
	}
	out, err = exec.Command("fsck.vfat", "-vn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.vfat -vn: %v\n%s", err, out)
	}
	return string(out)
}

func extract(t testing.TB, img string, offset, size int64) string {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	p := filepath.Join(t.TempDir(), "part.img")
	dst, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(dst, io.NewSectionReader(src, offset, size)); err != nil {
		t.Fatal(err)
	}
	return p
}

// mtools runs an mtools command on the image; spec is "img@@offset".
func mtools(t testing.TB, tool string, args ...string) []byte {
	t.Helper()
	requireTool(t, tool)
	cmd := exec.Command(tool, args...)
	cmd.Env = append(os.Environ(), "MTOOLSRC=/dev/null", "HOME="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("%s %q: %v\n%s%s", tool, args, err, stderr.Bytes(), out)
	}
	return out
}

// checkMtools reads every entry back through mtools, by long and by short
// path, and checks the listing shows each short name beside its long name.
func checkMtools(t testing.TB, img string, offset int64, tree []entry) {
	t.Helper()
	spec := fmt.Sprintf("%s@@%d", img, offset)
	// Bare recursive listing: long names, full paths.
	var want []string
	for _, e := range tree {
		s := "::/" + e.h.Name
		if e.dir {
			s += "/"
		}
		want = append(want, s)
	}
	got := strings.Split(strings.TrimSuffix(string(mtools(t, "mdir", "-/", "-b", "-i", spec, "::")), "\n"), "\n")
	if missing, extra := diff(want, got); len(missing)+len(extra) > 0 {
		t.Errorf("mdir -/ -b: missing %q, unexpected %q", missing, extra)
	}
	// The long listing pairs each short name with its long name.
	listing := string(mtools(t, "mdir", "-/", "-i", spec, "::"))
	shortPath := map[string]string{"": ""}
	for _, e := range tree {
		parent, base := filepath.Split(e.h.Name)
		parent = strings.TrimSuffix(parent, "/")
		if e.short == "" {
			continue
		}
		shortPath[e.h.Name] = strings.TrimPrefix(shortPath[parent]+"/"+e.short, "/")
		name, ext, _ := strings.Cut(e.short, ".")
		line := fmt.Sprintf("%-8s %-3s", name, ext)
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + ` .*?(  ` + regexp.QuoteMeta(base) + `)?$`)
		m := re.FindStringSubmatch(listing)
		switch {
		case m == nil:
			t.Errorf("%s: short name %q not in mdir listing", e.h.Name, e.short)
		case (base != e.short) != (m[1] != ""):
			t.Errorf("%s: listing line %q: long name shown %v, want %v", e.h.Name, m[0], m[1] != "", base != e.short)
		}
	}
	for _, e := range tree {
		if e.dir {
			continue
		}
		for _, p := range []string{e.h.Name, shortPath[e.h.Name]} {
			if p == "" {
				continue
			}
			got := mtools(t, "mcopy", "-n", "-i", spec, "::/"+p, "-")
			if !bytes.Equal(got, e.data) {
				t.Errorf("mcopy ::/%s: %d bytes (sha %x), want %d (sha %x)", p, len(got), sha256.Sum256(got), len(e.data), sha256.Sum256(e.data))
			}
		}
	}
}

// diff returns what is in want but not got, and the reverse.
func diff(want, got []string) (missing, extra []string) {
	m := map[string]int{}
	for _, s := range want {
		m[s]++
	}
	for _, s := range got {
		m[s]--
	}
	for _, s := range want {
		if m[s] > 0 {
			missing = append(missing, s)
		}
	}
	for _, s := range got {
		if m[s] < 0 {
			extra = append(extra, s)
		}
	}
	return missing, extra
}
