package ext4

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

const gib = 1 << 30

// patterned is the content of generated big files: never a zero block, and
// different in every block so misplaced blocks show.
func patterned(off int64, b []byte) {
	for i := range b {
		o := off + int64(i)
		b[i] = byte((o+(o>>12)*13)%251) + 1
	}
}

// richTree is the main test tree. variant changes one file's content.
func richTree(variant int, big bool) []entry {
	r := rand.New(rand.NewPCG(7, 7))
	var ents []entry
	d := func(name string, mode fs.FileMode, uid, gid uint32) {
		ents = append(ents, entry{kind: 'd', h: Header{Name: name, Mode: mode, Uid: uid, Gid: gid, Mtime: 1600000000 + int64(len(ents))}})
	}
	f := func(name string, mode fs.FileMode, uid, gid uint32, data []byte, links int) {
		ents = append(ents, entry{kind: 'f', h: Header{Name: name, Mode: mode, Uid: uid, Gid: gid, Mtime: 1600000000 + int64(len(ents)), Size: int64(len(data))}, data: data, links: links})
	}
	l := func(name, target string) {
		ents = append(ents, entry{kind: 'l', h: Header{Name: name, Mode: 0o777, Mtime: 1500000000}, target: target})
	}
	hl := func(name, target string) {
		ents = append(ents, entry{kind: 'h', h: Header{Name: name}, target: target})
	}

	if big {
		// Crosses group 1's superblock copy: several extents, all data.
		ents = append(ents, entry{kind: 'f', h: Header{Name: "big", Mode: 0o644, Size: 200<<20 + 123, Mtime: 1}, sparse: nil, target: "pattern"})
	}
	d("etc", 0o755, 0, 0)
	f("etc/a-orig", 0o644, 0, 0, []byte("linked content\n"), 4)
	hl("etc/b-link1", "etc/a-orig")
	f("etc/bigids", 0o640, 70000, 80000, []byte("ids"), 1)
	f("etc/empty", 0o600, 1, 2, nil, 1)
	l("etc/fast", "a-orig")
	d("etc/links", 0o700, 1000, 100)
	hl("etc/links/link2", "etc/a-orig")
	f("etc/passwd", 0o644, 0, 0, []byte("root:x:0:0::/root:/bin/sh\n"), 1)
	f("etc/sgid", fs.ModeSetgid|0o2755&0o777, 1000, 100, []byte("#!/bin/sh\n"), 1)
	f("etc/setuid", fs.ModeSetuid|0o755, 0, 0, []byte("\x7fELF"), 1)
	l("etc/slow", "/nix/store/"+strings.Repeat("x", 150)+"-very-long-symlink-target")
	d("etc/sticky", fs.ModeSticky|0o777, 0, 0)
	d("files", 0o755, 0, 0)
	sizes := []int{0, 1, 4095, 4096, 4097, 8192, 1<<20 + 3, 3<<20 + 5}
	for i := 0; i < 10; i++ {
		d(fmt.Sprintf("files/d%02d", i), 0o755, uint32(i), uint32(i))
		for j := 0; j < 30; j++ {
			n := r.IntN(40000)
			if k := i*30 + j; k < len(sizes) {
				n = sizes[k]
			}
			data := content(r, n)
			if i == 1 && j == 0 {
				data = make([]byte, 5*4096+17) // zero blocks inside -> holes
				copy(data[4096*2:], "middle")
				copy(data[len(data)-5:], "tail!")
			}
			if i == 2 && j == 3 && variant != 0 {
				data = append([]byte(nil), data...)
				data[len(data)/2] ^= byte(variant)
			}
			f(fmt.Sprintf("files/d%02d/f%03d", i, j), 0o644, 0, 0, data, 1)
		}
	}
	// Alternating data and hole blocks: 2000 extents, a depth-2 extent tree.
	frag := make([]byte, 4000*4096)
	for b := 0; b < 4000; b += 2 {
		frag[b*4096] = byte(b/2) | 1
	}
	f("frag", 0o644, 0, 0, frag, 1)
	d("many", 0o755, 0, 0)
	for i := 0; i < 20000; i++ {
		var data []byte
		if i%1000 == 0 {
			data = []byte(fmt.Sprint(i))
		}
		f(fmt.Sprintf("many/a-fairly-long-file-name-to-fill-leaves-%06d", i), 0o644, 0, 0, data, 1)
	}
	d("short", 0o755, 0, 0)
	for i := 0; i < 100000; i++ {
		f(fmt.Sprintf("short/%x", i), 0o644, 0, 0, nil, 1)
	}
	ents = append(ents, entry{kind: 'f', h: Header{Name: "sparse5g", Mode: 0o644, Size: 5*gib + 10, Mtime: 2}, sparse: map[int64][]byte{
		0:                 []byte("head"),
		1 * gib:           content(r, 64<<10),
		4*gib + gib/2 + 5: content(r, 1<<20),
		5 * gib:           []byte("0123456789"),
	}})
	hl("zz-link3", "etc/a-orig")
	return ents
}

// writeTree plans, writes and closes a tree; it returns the image path.
func writeTree(t testing.TB, ents []entry, opts Options) (string, *Writer) {
	t.Helper()
	if opts.Size == 0 {
		s := NewSizer()
		feed(t, s, ents)
		opts.Size, opts.Inodes = s.Plan(32 << 20)
	}
	img, f := newImage(t, opts.Size)
	w, err := NewWriter(f, 0, opts)
	if err != nil {
		t.Fatal(err)
	}
	feedAll(t, w, ents)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return img, w
}

// feedAll is feed plus generated ("pattern") big files.
func feedAll(t testing.TB, w *Writer, ents []entry) {
	t.Helper()
	inos := map[string]uint32{}
	for _, e := range ents {
		if e.target == "pattern" {
			f, err := w.Create(e.h)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 3<<20+1)
			for off := int64(0); off < e.h.Size; {
				n := min(int64(len(buf)), e.h.Size-off)
				patterned(off, buf[:n])
				if _, err := f.Write(buf[:n]); err != nil {
					t.Fatal(err)
				}
				off += n
			}
			continue
		}
		if err := feedWriter(t, w, e, inos); err != nil {
			t.Fatalf("%c %s: %v", e.kind, e.h.Name, err)
		}
	}
}

func TestWriterTree(t *testing.T) {
	requireTool(t, "e2fsck")
	ents := richTree(0, true)
	img, w := writeTree(t, ents, Options{Label: "nixos", UUID: testUUID, HashSeed: testSeed, Time: testTime})
	fsck(t, img)

	st := w.Stats()
	var want Stats
	for _, e := range ents {
		switch e.kind {
		case 'f':
			want.Files++
			want.Bytes += e.h.Size
		case 'd':
			want.Dirs++
		case 'l':
			want.Symlinks++
		case 'h':
			want.HardLinks++
		}
	}
	if st.Files != want.Files || st.Dirs != want.Dirs || st.Symlinks != want.Symlinks || st.HardLinks != want.HardLinks ||
		st.Bytes != want.Bytes || st.BlocksUsed == 0 || st.BlocksUsed > st.BlocksTotal || st.InodesUsed != uint32(11+len(ents)-3) {
		t.Errorf("stats %+v, want %+v", st, want)
	}

	t.Run("features", func(t *testing.T) {
		out := debugfs(t, img, "stats")
		for _, feat := range []string{"has_journal", "ext_attr", "dir_index", "filetype", "extent", "64bit", "flex_bg",
			"sparse_super", "large_file", "huge_file", "dir_nlink", "extra_isize", "metadata_csum"} {
			if !regexp.MustCompile(`Filesystem features:.*\b` + feat + `\b`).MatchString(out) {
				t.Errorf("feature %s missing:\n%s", feat, out[:min(len(out), 600)])
			}
		}
		for _, want := range []string{"Filesystem volume name:   nixos", "Filesystem flags:         signed_directory_hash",
			"Default directory hash:   half_md4", "Errors behavior:          Continue", "Mount count:              0",
			"Journal inode:            8", "Inode size:\t          256", "Flex block group size:    16",
			"Filesystem UUID:          deadbeef-0102-0304-0506-0708090a0b0c"} {
			if !strings.Contains(out, want) {
				t.Errorf("stats lacks %q", want)
			}
		}
		if strings.Contains(out, "resize_inode") {
			t.Error("resize_inode present")
		}
		hdr, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput()
		if err != nil || !strings.Contains(string(hdr), "Journal features:         (none)") ||
			!strings.Contains(string(hdr), "Journal start:            0") {
			t.Errorf("journal: %v\n%s", err, hdr)
		}
	})

	t.Run("debugfs", func(t *testing.T) { checkDebugfs(t, img, ents) })
	t.Run("extent-tree", func(t *testing.T) {
		// 2000 extents: 6 leaves, one index block, depth 2.
		out := debugfs(t, img, "ex frag")
		if !strings.Contains(out, " 0/ 2 ") || !strings.Contains(out, " 2/ 2 ") {
			t.Errorf("frag extent tree:\n%.600s", out)
		}
	})
	t.Run("go-diskfs", func(t *testing.T) { checkGoDiskfs(t, img, ents) })
	t.Run("kernel", func(t *testing.T) { checkKernel(t, img, ents) })
	t.Run("sparse", func(t *testing.T) {
		var s syscall.Stat_t
		if err := syscall.Stat(img, &s); err != nil {
			t.Fatal(err)
		}
		alloc := s.Blocks * 512
		// Data: 200 MiB big + ~20 MiB of small files and frag; the 5 GiB
		// file must cost about its 1 MiB of data.
		if alloc > 320<<20 || s.Size < 5*gib {
			t.Errorf("image %d bytes apparent, %d allocated", s.Size, alloc)
		}
		out := debugfs(t, img, "stat sparse5g")
		m := regexp.MustCompile(`Blockcount: (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no blockcount:\n%s", out)
		}
		if n, _ := strconv.Atoi(m[1]); n > 2*(1<<20+64<<10+3*4096)/512 {
			t.Errorf("sparse5g uses %d sectors", n)
		}
	})
}

// TestDeterministic writes the same tree twice (byte-identical) and a
// one-byte change (different).
func TestDeterministic(t *testing.T) {
	small := func(variant int) []entry {
		var out []entry
		for _, e := range richTree(variant, false) {
			if !strings.HasPrefix(e.h.Name, "short/") && e.h.Name != "sparse5g" {
				out = append(out, e)
			}
		}
		return out
	}
	opts := Options{Size: 256 << 20, Inodes: 30000, UUID: testUUID, HashSeed: testSeed, Time: testTime}
	a, _ := writeTree(t, small(0), opts)
	b, _ := writeTree(t, small(0), opts)
	c, _ := writeTree(t, small(1), opts)
	fsck(t, a)
	ha, hb, hc := imagecheck.SHA256File(t, a), imagecheck.SHA256File(t, b), imagecheck.SHA256File(t, c)
	if ha != hb {
		t.Errorf("same input, different images: %s %s", ha, hb)
	}
	if ha == hc {
		t.Error("changed input, same image")
	}
	opts.UUID[0]++
	d, _ := writeTree(t, small(0), opts)
	if imagecheck.SHA256File(t, d) == ha {
		t.Error("changed UUID, same image")
	}
}

// TestFeedOrder: entries of a directory fed in reverse still give sorted,
// valid directories.
func TestFeedOrder(t *testing.T) {
	ents := []entry{{kind: 'd', h: Header{Name: "d", Mode: 0o755}}}
	for i := 3000; i > 0; i-- {
		ents = append(ents, entry{kind: 'f', h: Header{Name: fmt.Sprintf("d/n%d", i), Mode: 0o644}})
	}
	ents = append(ents, entry{kind: 'd', h: Header{Name: "c", Mode: 0o755}},
		entry{kind: 'f', h: Header{Name: "c/z", Mode: 0o644}}, entry{kind: 'f', h: Header{Name: "c/a", Mode: 0o644}})
	img, _ := writeTree(t, ents, Options{Size: 64 << 20, UUID: testUUID, Time: testTime})
	fsck(t, img)
	out := debugfs(t, img, "ls -p c")
	if !regexp.MustCompile(`(?s)/a/.*/z/`).MatchString(out) {
		t.Errorf("c not sorted:\n%s", out)
	}
}

func TestErrors(t *testing.T) {
	_, f := newImage(t, 64<<20)
	if _, err := NewWriter(f, 0, Options{Size: 64 << 20, Label: strings.Repeat("x", 17)}); err == nil {
		t.Error("long label accepted")
	}
	if _, err := NewWriter(f, 0, Options{Size: 128 << 20}); err == nil {
		t.Error("filesystem larger than the file accepted")
	}
	w, err := NewWriter(f, 0, Options{Size: 64 << 20, Time: testTime})
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", what, err, want)
		}
	}
	check("missing parent", w.Mkdir(Header{Name: "a/b"}), "does not exist")
	check("bad name", w.Mkdir(Header{Name: "/abs"}), "invalid name")
	check("dot name", w.Mkdir(Header{Name: "a/../b"}), "invalid name")
	if err := w.Mkdir(Header{Name: "a", Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	check("SetRoot late", w.SetRoot(Header{}), "SetRoot")
	check("duplicate", w.Mkdir(Header{Name: "a"}), "duplicate")
	check("lost+found file", w.Symlink(Header{Name: "lost+found"}, "x"), "reserved")
	if err := w.Mkdir(Header{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	check("closed parent", w.Mkdir(Header{Name: "a/c"}), "already complete")
	check("link to dir", w.Link("b/l", 12), "not a regular file")
	fw, err := w.Create(Header{Name: "b/f", Size: 3})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := fw.Write([]byte("abcd")); n != 3 || !errors.Is(err, ErrWriteTooLong) {
		t.Errorf("long write: %d %v", n, err)
	}
	fw, err = w.Create(Header{Name: "b/g", Size: 3})
	if err != nil {
		t.Fatal(err)
	}
	fw.Write([]byte("x"))
	check("link to incomplete", w.Link("b/h", fw.Inode()), "not complete")
	if err := w.Mkdir(Header{Name: "b/z"}); !errors.Is(err, ErrWriteTooShort) {
		t.Errorf("short write: %v", err)
	}
	if err := w.Close(); !errors.Is(err, ErrWriteTooShort) {
		t.Errorf("close after failure: %v", err)
	}
}

// TestLostFoundAttrs: a caller may set lost+found's attributes.
func TestLostFoundAttrs(t *testing.T) {
	img, _ := writeTree(t, []entry{{kind: 'd', h: Header{Name: "lost+found", Mode: 0o750, Uid: 5, Mtime: 42}}},
		Options{Size: 16 << 20, Time: testTime})
	fsck(t, img)
	if out := debugfs(t, img, "stat lost+found"); !strings.Contains(out, "Mode:  0750") || !strings.Contains(out, "User:     5") {
		t.Errorf("lost+found:\n%s", out)
	}
}

// TestTiny: below 8 MiB there is no journal, like mke2fs.
func TestTiny(t *testing.T) {
	img, _ := writeTree(t, []entry{{kind: 'f', h: Header{Name: "x", Mode: 0o644, Size: 5}, data: []byte("hello")}},
		Options{Size: 1 << 20, Time: testTime})
	fsck(t, img)
	if debugfs(t, img, "cat x") != "hello" {
		t.Error("content")
	}
}

// TestReadFrom covers ReadFrom from a plain reader, a short and a long
// source, and the pread/pwrite fallback of the copy_file_range path.
func TestReadFrom(t *testing.T) {
	defer func(f func(int, *int64, int, *int64, int, int) (int, error)) { copyFileRange = f }(copyFileRange)
	copyFileRange = func(int, *int64, int, *int64, int, int) (int, error) { return 0, unix.EXDEV }

	r := rand.New(rand.NewPCG(1, 2))
	data := content(r, 3<<20+77)
	copy(data[8192:], make([]byte, 3*4096)) // a zero stretch
	img, f := newImage(t, 64<<20)
	w, err := NewWriter(f, 0, Options{Size: 64 << 20, Time: testTime})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetRoot(Header{Mode: 0o711, Uid: 3, Gid: 4, Mtime: 99}); err != nil {
		t.Fatal(err)
	}
	fw, _ := w.Create(Header{Name: "plain", Mode: 0o644, Size: int64(len(data))})
	if n, err := fw.ReadFrom(bytes.NewReader(data)); n != int64(len(data)) || err != nil {
		t.Fatalf("ReadFrom plain: %d %v", n, err)
	}
	src := filepath.Join(t.TempDir(), "src")
	os.WriteFile(src, data, 0o644)
	sf, _ := os.Open(src)
	defer sf.Close()
	fw, _ = w.Create(Header{Name: "viafile", Mode: 0o644, Size: int64(len(data))})
	if n, err := fw.ReadFrom(sf); n != int64(len(data)) || err != nil {
		t.Fatalf("ReadFrom file (fallback): %d %v", n, err)
	}
	fw, _ = w.Create(Header{Name: "long", Mode: 0o644, Size: 10})
	if _, err := fw.ReadFrom(bytes.NewReader(data)); !errors.Is(err, ErrWriteTooLong) {
		t.Errorf("long source: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	fsck(t, img)
	for _, n := range []string{"plain", "viafile"} {
		if got := debugfs(t, img, "cat "+n); sha([]byte(got)) != sha(data) {
			t.Errorf("%s differs", n)
		}
	}
	if out := debugfs(t, img, "stat /"); !strings.Contains(out, "Mode:  0711") || !strings.Contains(out, "User:     3   Group:     4") ||
		!strings.Contains(out, "mtime: 0x00000063") {
		t.Errorf("root:\n%s", out)
	}

	// A short source is reported by the next call.
	_, f2 := newImage(t, 64<<20)
	w2, _ := NewWriter(f2, 0, Options{Size: 64 << 20})
	fw, _ = w2.Create(Header{Name: "short", Size: 100})
	if n, err := fw.ReadFrom(bytes.NewReader(data[:50])); n != 50 || err != nil {
		t.Errorf("short source: %d %v", n, err)
	}
	if err := w2.Close(); !errors.Is(err, ErrWriteTooShort) {
		t.Errorf("close after short source: %v", err)
	}
}
