package fat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	dfile "github.com/diskfs/go-diskfs/backend/file"
	dfat32 "github.com/diskfs/go-diskfs/filesystem/fat32"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fattest"
)

// TestESP writes an ESP-like tree at the sizes make-disk-image produces
// and reads it back with fsck.vfat, mtools and go-diskfs.
func TestESP(t *testing.T) {
	for _, tc := range []struct {
		size, offset int64
		cluster      string // fsck.vfat -v: "<n> bytes per cluster"
	}{
		{64 << 20, 1 << 20, "512"},
		{92 << 20, 1 << 20, "512"}, // efixbootldr's ESP
		{249 << 20, 0, "512"},      // the efi layout's default
		{1 << 30, 1 << 20, "4096"}, // above 260 MiB: 4 KiB, like mkfs.fat
		{4 << 30, 0, "4096"},
	} {
		t.Run(fmt.Sprint(tc.size>>20, "MiB"), func(t *testing.T) {
			if tc.size > 1<<30 && testing.Short() {
				t.Skip("short")
			}
			img, f := newImage(t, tc.offset+tc.size+(1<<20))
			tree := fattest.ESPTree(8 << 20)
			opts := Options{Size: tc.size, Label: "esp", VolumeID: 0x1234ABCD, Time: testTime}
			write(t, f, tc.offset, opts, tree)

			v := fattest.FsckVfat(t, img, tc.offset, tc.size)
			for _, want := range []string{"32 bit entries", " " + tc.cluster + " bytes per cluster", "32 reserved sectors", "Media byte 0xf8", fmt.Sprintf("%d hidden sectors", tc.offset/512)} {
				if !strings.Contains(v, want) {
					t.Errorf("fsck.vfat -vn lacks %q:\n%s", want, v)
				}
			}
			checkMtools(t, img, tc.offset, tree)
			spec := fmt.Sprintf("%s@@%d", img, tc.offset)
			info := string(fattest.Mtools(t, "minfo", "-i", spec, "::"))
			for _, want := range []string{`disk label="ESP        "`, "serial number: 1234ABCD", `disk type="FAT32   "`, "backup boot sector=6"} {
				if !strings.Contains(info, want) {
					t.Errorf("minfo lacks %q:\n%s", want, info)
				}
			}
			// mlabel reads the root directory's label entry, minfo the boot sector's.
			if l := string(fattest.Mtools(t, "mlabel", "-s", "-i", spec, "::")); strings.TrimSpace(l) != "Volume label is ESP" {
				t.Errorf("mlabel -s: %q", l)
			}
			readDiskfs(t, img, tc.offset, tc.size, tree)

			// Sparse: little more than the content and the used FAT is allocated.
			var content int64
			for _, e := range tree {
				content += int64(len(e.Data))
			}
			st, _ := f.Stat()
			if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > content+(4<<20) {
				t.Errorf("image allocates %d bytes for %d bytes of content", used, content)
			}
		})
	}
}

// readDiskfs reads the files back with go-diskfs, a third reader. Its
// v1.9.4 FAT32 reader refusing our image is logged, not failed; a read
// that succeeds with other bytes fails.
func readDiskfs(t *testing.T, img string, offset, size int64, tree []fattest.Entry) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := dfat32.Read(dfile.New(f, true), size, offset, 512)
	if err != nil {
		t.Logf("go-diskfs cannot open the filesystem (reader limitation, not checked): %v", err)
		return
	}
	if l := strings.TrimSpace(d.Label()); l != "ESP" {
		t.Errorf("go-diskfs label %q", l)
	}
	var read int
	for _, e := range tree {
		if e.Dir {
			continue
		}
		got, err := readDiskfsFile(d, e.Name)
		if err != nil {
			t.Logf("go-diskfs: %s: %v (reader limitation, not checked)", e.Name, err)
			continue
		}
		read++
		if !bytes.Equal(got, e.Data) {
			t.Errorf("go-diskfs %s: %d bytes, want %d", e.Name, len(got), len(e.Data))
		}
	}
	t.Logf("go-diskfs read %d files back", read)
}

func readDiskfsFile(d *dfat32.FileSystem, name string) (data []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			data, err = nil, fmt.Errorf("panic: %v", r)
		}
	}()
	fh, err := d.OpenFile("/"+name, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return io.ReadAll(fh)
}

func TestDeterministic(t *testing.T) {
	const size = 64 << 20
	tree := fattest.ESPTree(1 << 20)
	opts := Options{Size: size, Label: "ESP", VolumeID: 1, Time: testTime}
	build := func(o Options, tr []fattest.Entry) []byte {
		p, f := newImage(t, size)
		write(t, f, 0, o, tr)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := build(opts, tree)
	if !bytes.Equal(a, build(opts, tree)) {
		t.Fatal("two writes of the same tree differ")
	}
	o := opts
	o.VolumeID = 2
	if bytes.Equal(a, build(o, tree)) {
		t.Error("VolumeID does not change the image")
	}
	o = opts
	o.Time++
	o.Time++ // FAT times have 2 s resolution
	if bytes.Equal(a, build(o, tree)) {
		t.Error("Time does not change the image")
	}
	tr := append([]fattest.Entry(nil), tree...)
	tr[2].Mtime += 86400
	if bytes.Equal(a, build(opts, tr)) {
		t.Error("a file's Mtime does not change the image")
	}
}

// TestShortNamesOrderIndependent: short names depend on the set of names,
// not on the order they were added in.
func TestShortNamesOrderIndependent(t *testing.T) {
	names := []string{"nixos-generation-1.conf", "nixos-generation-2.conf", "NIXOS-~1.CON", "Nixos-G.c", "nixos gen.c", "nixos.gen.c", "NIXOSG~1.C"}
	assign := func(order []string) map[string][11]byte {
		d := &dir{keys: map[string]bool{}}
		for _, n := range order {
			d.add(dirent{name: n})
		}
		if err := d.shortNames(); err != nil {
			t.Fatal(err)
		}
		m := map[string][11]byte{}
		seen := map[[11]byte]string{}
		for _, e := range d.ents {
			if o, dup := seen[e.short]; dup {
				t.Fatalf("%q and %q share short name %q", o, e.name, e.short)
			}
			seen[e.short] = e.name
			m[e.name] = e.short
		}
		return m
	}
	// Close sorts before assigning; do the same here.
	sorted := append([]string(nil), names...)
	slices.Sort(sorted)
	a := assign(sorted)
	want := map[string]string{
		"NIXOS-~1.CON":            "NIXOS-~1CON", // exact 8.3: keeps its name
		"nixos-generation-1.conf": "NIXOS-~2CON",
		"nixos-generation-2.conf": "NIXOS-~3CON",
		"NIXOSG~1.C":              "NIXOSG~1C  ",
		"Nixos-G.c":               "NIXOS-G C  ", // only the case differs: no tail
		"nixos gen.c":             "NIXOSG~2C  ",
		"nixos.gen.c":             "NIXOSG~3C  ",
	}
	for n, s := range want {
		if got := a[n]; string(got[:]) != s {
			t.Errorf("%q: short %q, want %q", n, got[:], s)
		}
	}
	// The checksum the long entries carry is the spec's rotate-and-add.
	if c := checksum([11]byte([]byte("README  TXT"))); c != 0x73 {
		t.Errorf("checksum(README  TXT) = %#x", c)
	}
}

// TestManyEntries makes the root and a subdirectory span many 512-byte
// clusters (the root's chain then continues past the file data).
func TestManyEntries(t *testing.T) {
	const size = 64 << 20
	img, f := newImage(t, size)
	tree := []fattest.Entry{{Dir: true, Name: "many", Mtime: testTime}}
	for i := range 300 {
		name := fmt.Sprintf("a rather long file name number %03d.conf", i)
		tree = append(tree, fattest.Entry{Name: name, Mode: 0o444, Mtime: testTime, Data: []byte("abc")})
		tree = append(tree, fattest.Entry{Name: "many/" + name, Mode: 0o644, Mtime: testTime, Data: []byte{byte(i)}})
	}
	write(t, f, 0, Options{Size: size, VolumeID: 9, Time: testTime}, tree)
	fattest.FsckVfat(t, img, 0, size)
	checkMtools(t, img, 0, tree)
	// Read-only files show as such.
	if l := string(fattest.Mtools(t, "mattrib", "-i", img, "::/a rather long file name number 007.conf")); !strings.Contains(l, "R") {
		t.Errorf("mattrib: %q, want the read-only attribute", l)
	}
}

func TestTooSmall(t *testing.T) {
	_, f := newImage(t, 32<<20)
	_, err := NewWriter(f, 0, Options{Size: 32 << 20})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprint(MinSize(512))) {
		t.Fatalf("32 MiB: %v, want an error naming %d", err, MinSize(512))
	}
	for _, cs := range []int{512, 1024, 4096, 32768} {
		min := MinSize(cs)
		img, f := newImage(t, min)
		if _, err := NewWriter(f, 0, Options{Size: min - 512, ClusterSize: cs}); err == nil {
			t.Errorf("cluster %d: %d bytes accepted, below MinSize", cs, min-512)
		}
		write(t, f, 0, Options{Size: min, ClusterSize: cs}, nil)
		if cs <= 4096 { // fsck.vfat itself is fine; keep the run short
			fattest.FsckVfat(t, img, 0, min)
		}
	}
	// The default follows mkfs.fat's FAT32 table.
	for size, spc := range map[int64]uint32{64 << 20: 1, 260 << 20: 1, (260 << 20) + 512: 8, 8 << 30: 8, 9 << 30: 16, 40 << 30: 64} {
		if g, err := newGeometry(size, 0); err != nil || g.spc != spc {
			t.Errorf("%d bytes: %+v, %v; want %d sectors per cluster", size, g, err, spc)
		}
	}
	if _, err := newGeometry(64<<20, 3000); err == nil {
		t.Error("cluster size 3000 accepted")
	}
}

// TestFull: running out of clusters is a clear, non-fatal error from
// Create, and a fatal one from Close when the directories do not fit.
func TestFull(t *testing.T) {
	const size = 40 << 20
	img, f := newImage(t, size)
	w, err := NewWriter(f, 0, Options{Size: size, Time: testTime})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{1}, 1<<20)
	var n int
	for ; ; n++ {
		fw, err := w.Create(Header{Name: fmt.Sprintf("f%d", n), Mode: 0o644, Size: 1 << 20})
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil || n > 100 {
			t.Fatalf("file %d: %v", n, err)
		}
		if _, err := fw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	fattest.FsckVfat(t, img, 0, size)

	// Fill every cluster, then ask for one more directory.
	w, err = NewWriter(f, 0, Options{Size: size, Time: testTime})
	if err != nil {
		t.Fatal(err)
	}
	free := int64(w.free()) * w.g.clusterSize() // the root's cluster is already taken
	if _, err := w.Create(Header{Name: "all", Size: free}); err != nil {
		t.Fatal(err)
	}
	if err := w.Mkdir(Header{Name: "d"}); !errors.Is(err, ErrWriteTooShort) {
		t.Fatalf("Mkdir after an unwritten file: %v, want ErrWriteTooShort", err)
	}
	w, _ = NewWriter(f, 0, Options{Size: size, Time: testTime})
	fw, _ := w.Create(Header{Name: "all", Size: free})
	if _, err := io.CopyN(fw, zeroReader{}, free); err != nil {
		t.Fatal(err)
	}
	if err := w.Mkdir(Header{Name: "d"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); !errors.Is(err, ErrFull) {
		t.Fatalf("Close with no room for a directory: %v, want ErrFull", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestErrors(t *testing.T) {
	const size = 64 << 20
	_, f := newImage(t, size)
	for _, l := range []string{"TOOLONGLABEL", "a*b", " X", "ÜBER"} {
		if _, err := NewWriter(f, 0, Options{Size: size, Label: l}); err == nil {
			t.Errorf("label %q accepted", l)
		}
	}
	if _, err := NewWriter(f, 100, Options{Size: size}); err == nil {
		t.Error("unaligned offset accepted")
	}
	if _, err := NewWriter(f, 1<<20, Options{Size: size}); err == nil {
		t.Error("filesystem beyond the end of the file accepted")
	}
	w, err := NewWriter(f, 0, Options{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Mkdir(Header{Name: "EFI"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"efi", "EFI/", "/x", "a/b", "x/../y", "a:b", "a?", "trailing.", "trailing ", strings.Repeat("x", 256), "EFI//x"} {
		if err := w.Mkdir(Header{Name: name}); err == nil {
			t.Errorf("Mkdir(%q) accepted", name)
		}
	}
	if _, err := w.Create(Header{Name: "big", Size: 1 << 32}); err == nil {
		t.Error("a 4 GiB file accepted")
	}
	fw, err := w.Create(Header{Name: "EFI/x", Size: 3})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := fw.Write([]byte("abcd")); n != 3 || !errors.Is(err, ErrWriteTooLong) {
		t.Errorf("overlong write: %d, %v", n, err)
	}
	if _, err := w.Create(Header{Name: "EFI/X"}); err == nil {
		t.Error("case-insensitive duplicate accepted")
	}
	if _, err := w.Create(Header{Name: "short", Size: 2}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); !errors.Is(err, ErrWriteTooShort) {
		t.Errorf("Close after a short file: %v", err)
	}
	if err := w.Mkdir(Header{Name: "late"}); err == nil {
		t.Error("writer usable after a fatal error")
	}
}

// TestReadFromFile copies from *os.File sources (copy_file_range), including
// one shorter and one longer than its header.
func TestReadFromFile(t *testing.T) {
	const size = 64 << 20
	img, f := newImage(t, size)
	data := fattest.Random(11, 5<<20+123)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(f, 0, Options{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	copyFrom := func(name string, n int64) error {
		s, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		fw, err := w.Create(Header{Name: name, Mode: 0o644, Size: n})
		if err != nil {
			return err
		}
		_, err = io.Copy(fw, s)
		return err
	}
	if err := copyFrom("kernel.efi", int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := copyFrom("longer", int64(len(data))-1); !errors.Is(err, ErrWriteTooLong) {
		t.Errorf("source longer than header: %v", err)
	}
	if err := copyFrom("shorter", int64(len(data))+1); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); !errors.Is(err, ErrWriteTooShort) {
		t.Fatalf("Close after a short source: %v", err)
	}

	w, err = NewWriter(f, 0, Options{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	if err := copyFrom("kernel.efi", int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	fattest.FsckVfat(t, img, 0, size)
	checkMtools(t, img, 0, []fattest.Entry{{Name: "kernel.efi", Data: data}})
}

// TestOracle: fsck.vfat -n notices each kind of damage our writer must
// avoid, so a clean run means something.
func TestOracle(t *testing.T) {
	requireTool(t, "fsck.vfat")
	const size = 64 << 20
	img, f := newImage(t, size)
	write(t, f, 0, Options{Size: size, Label: "ESP", Time: testTime}, fattest.ESPTree(1<<20))
	orig, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := newGeometry(size, 0)
	// The first subdirectory placed is EFI (after the root's cluster and
	// the file data); find it through the root's first entries instead.
	root := orig[g.clusterOffset(rootCluster):]
	efi := uint32(root[32+20+0])<<16 | uint32(root[32+20+1])<<24 | uint32(root[32+26]) | uint32(root[32+27])<<8
	if string(root[32:43]) != "EFI        " {
		t.Fatalf("root's second entry is %q", root[32:43])
	}
	// EFI/BOOT is EFI's first entry after . and ..
	efiDir := orig[g.clusterOffset(efi):]
	boot := uint32(efiDir[64+26]) | uint32(efiDir[64+27])<<8 | uint32(efiDir[64+20])<<16
	for _, tc := range []struct {
		name string
		off  int64
		val  byte
		want string
	}{
		{"free count", 512 + 488, orig[512+488] + 1, "Free cluster summary"},
		{"backup boot sector", 6*512 + 13, 2, "differ"},
		{"second FAT", g.fatOffset(1) + 8, 0, "FATs differ"},
		{"dotdot of a first-level dir", g.clusterOffset(efi) + 32 + 26, 2, ".."},
		{"dotdot of a nested dir", g.clusterOffset(boot) + 32 + 26, 0, ".."},
		{"long-name checksum", g.clusterOffset(efi) + 64 + 32 + 13, 0x42, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(orig)
			if b[tc.off] == tc.val {
				t.Fatalf("byte %d is already %#x", tc.off, tc.val)
			}
			b[tc.off] = tc.val
			p := filepath.Join(t.TempDir(), "bad.img")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			out, _ := exec.Command("fsck.vfat", "-n", p).CombinedOutput()
			t.Logf("%s", out)
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) <= 2 || !strings.Contains(string(out), tc.want) {
				t.Errorf("fsck.vfat -n did not report it (want %q):\n%s", tc.want, out)
			}
		})
	}
}
