// Package fattest is test support for FAT32 images: an ESP-like tree to
// write, and fsck.vfat and mtools as the oracles that read it back. Every
// helper takes a testing.TB and fails it with the tool's output.
//
// The package must not import internal/fs/fat: the writer's own tests use it.
package fattest

import (
	"bytes"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// Time is the time ESPTree's directories carry (its files carry Time+1).
const Time = 1700000000 // 2023-11-14 22:13:20 UTC

// Entry is one item of a test tree; Short is the expected 8.3 name of its
// last component ("" = not checked).
type Entry struct {
	Dir   bool
	Name  string // slash separated, relative to the root
	Mode  fs.FileMode
	Mtime int64
	Data  []byte // a file's content
	Short string
}

// Random returns n bytes that depend only on seed.
func Random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

// ESPTree is what systemd-boot and NixOS put on an ESP, plus the corner
// cases: long names that collide in 8.3, an exact 8.3 name, mixed case,
// non-ASCII, spaces, an empty file, a nested empty directory and a file
// with zero pages in the middle (written as holes).
func ESPTree(kernelSize int) []Entry {
	const hash = "0123456789abcdfghijklmnpqrsvwxyz"
	sparse := Random(7, 64<<10)
	clear(sparse[8192 : 8192+40000])
	d := func(name, short string) Entry {
		return Entry{Dir: true, Name: name, Mtime: Time, Short: short}
	}
	f := func(name, short string, data []byte) Entry {
		return Entry{Name: name, Mode: 0o644, Mtime: Time + 1, Data: data, Short: short}
	}
	return []Entry{
		d("EFI", "EFI"),
		d("EFI/BOOT", "BOOT"),
		f("EFI/BOOT/BOOTX64.EFI", "BOOTX64.EFI", Random(1, 1536<<10)),
		d("EFI/Linux", "LINUX"),
		d("EFI/nixos", "NIXOS"),
		f("EFI/nixos/"+hash+"-initrd-linux-6.1-initrd.efi", "012345~1.EFI", Random(2, 3<<20)),
		f("EFI/nixos/"+hash+"-linux-6.1-bzImage.efi", "012345~2.EFI", Random(3, kernelSize)),
		d("EFI/systemd", "SYSTEMD"),
		f("EFI/systemd/systemd-bootx64.efi", "SYSTEM~1.EFI", Random(4, 90<<10)),
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

// Writer is internal/fs/fat's Writer, whose header type H the caller makes
// from an Entry.
type Writer[H any] interface {
	Mkdir(H) error
	Create(H) (io.Writer, error)
	Close() error
}

// Write adds tree to w in order, with the headers header makes, and closes w.
func Write[H any](t testing.TB, w Writer[H], header func(Entry) H, tree []Entry) {
	t.Helper()
	for _, e := range tree {
		if e.Dir {
			if err := w.Mkdir(header(e)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		fw, err := w.Create(header(e))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(fw, bytes.NewReader(e.Data)); err != nil {
			t.Fatalf("%s: %v", e.Name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

var fsckSummary = regexp.MustCompile(`^\S+: \d+ files, \d+/\d+ clusters$`)

// FsckVfat runs `fsck.vfat -n` on the filesystem at img[offset:offset+size]
// (copied out when offset != 0: fsck.vfat has no offset option) and fails
// on a non-zero exit or any line but the banner and the summary. It returns
// the `-vn` output.
func FsckVfat(t testing.TB, img string, offset, size int64) string {
	t.Helper()
	imagecheck.RequireTool(t, "fsck.vfat")
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

// Mtools runs an mtools command on the image; spec is "img@@offset".
func Mtools(t testing.TB, tool string, args ...string) []byte {
	t.Helper()
	imagecheck.RequireTool(t, tool)
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
