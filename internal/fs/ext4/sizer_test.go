package ext4

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// smallFilesTree is the shape that exhausted inodes in nixpkgs' image
// builder: lots of tiny files. 200k of them sit in one directory, which
// also needs a two-level htree.
func smallFilesTree() []entry {
	r := rand.New(rand.NewPCG(3, 3))
	ents := []entry{{kind: 'd', h: Header{Name: "store", Mode: 0o755}}}
	for i := 0; i < 200000; i++ {
		n := 1 + r.IntN(1500)
		ents = append(ents, entry{kind: 'f', h: Header{
			Name: fmt.Sprintf("store/%016x%016x-pkg-%d", r.Uint64(), r.Uint64(), i), Mode: 0o444, Size: int64(n)}, data: content(r, n)})
	}
	sortEntries(ents[1:])
	ents = append(ents, entry{kind: 'd', h: Header{Name: "var", Mode: 0o755}})
	for i := 0; i < 5000; i++ {
		ents = append(ents, entry{kind: 'f', h: Header{Name: fmt.Sprintf("var/e%04d", i), Mode: 0o644}})
	}
	return ents
}

func sortEntries(e []entry) {
	// Names are unique; a sorted walk is what callers feed.
	slices.SortFunc(e, func(a, b entry) int { return strings.Compare(a.h.Name, b.h.Name) })
}

func plan(t testing.TB, ents []entry, extra int64) (int64, uint32, *Sizer) {
	s := NewSizer()
	feed(t, s, ents)
	size, inodes := s.Plan(extra)
	return size, inodes, s
}

func TestSizerSmallFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	ents := smallFilesTree()
	size, inodes, s := plan(t, ents, 0)
	used := s.InodesUsed()
	if size%mib != 0 || inodes < used+used/10 {
		t.Fatalf("plan %d bytes, %d inodes for %d used", size, inodes, used)
	}
	img, w := writeTree(t, ents, Options{Size: size, Inodes: inodes, UUID: testUUID, HashSeed: testSeed, Time: testTime})
	fsck(t, img)
	st := w.Stats()
	t.Logf("plan %d MiB, %d inodes; used %d/%d blocks, %d/%d inodes", size>>20, inodes, st.BlocksUsed, st.BlocksTotal, st.InodesUsed, st.InodesTotal)
	if st.InodesUsed != used {
		t.Errorf("sizer counted %d inodes, writer used %d", used, st.InodesUsed)
	}
	if out := debugfs(t, img, "htree store"); !strings.Contains(out, "Indirect levels: 1") {
		t.Errorf("store is not a two-level htree:\n%.400s", out)
	}
	// Every name must be found through the index (the kernel agrees in
	// TestWriterTree; here debugfs does the lookups).
	for _, i := range []int{1, 777, 123456, 199999} {
		e := ents[i]
		if got := debugfs(t, img, "cat "+e.h.Name); got != string(e.data) {
			t.Errorf("%s: content via htree lookup differs", e.h.Name)
		}
	}
	// Too few inodes: a clear error, not a panic.
	_, f := newImage(t, size)
	w2, err := NewWriter(f, 0, Options{Size: size, Inodes: used - 200})
	if err != nil {
		t.Fatal(err)
	}
	err = feedErr(t, w2, ents)
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "out of inodes") {
		t.Errorf("with too few inodes: %v", err)
	}
}

// feedErr feeds until the first error and returns it (or Close's).
func feedErr(t testing.TB, w *Writer, ents []entry) error {
	inos := map[string]uint32{}
	for _, e := range ents {
		if e.target == "pattern" {
			f, err := w.Create(e.h)
			if err != nil {
				return err
			}
			buf := make([]byte, 1<<20)
			for off := int64(0); off < e.h.Size; {
				n := min(int64(len(buf)), e.h.Size-off)
				patterned(off, buf[:n])
				if _, err := f.Write(buf[:n]); err != nil {
					return err
				}
				off += n
			}
			continue
		}
		if err := feedWriter(t, w, e, inos); err != nil {
			return err
		}
	}
	return w.Close()
}

func bigFilesTree() []entry {
	r := rand.New(rand.NewPCG(5, 5))
	var ents []entry
	for i, sz := range []int64{150<<20 + 1, 150 << 20, 40<<20 + 4095} {
		ents = append(ents, entry{kind: 'f', h: Header{Name: fmt.Sprintf("big%d", i), Mode: 0o644, Size: sz}, target: "pattern"})
	}
	ents = append(ents, entry{kind: 'd', h: Header{Name: "small", Mode: 0o755}})
	for i := 0; i < 100; i++ {
		n := 100 << 10
		ents = append(ents, entry{kind: 'f', h: Header{Name: fmt.Sprintf("small/%03d", i), Mode: 0o644, Size: int64(n)}, data: content(r, n)})
	}
	return ents
}

func TestSizerBigFiles(t *testing.T) {
	ents := bigFilesTree()
	size, inodes, _ := plan(t, ents, 0)
	img, w := writeTree(t, ents, Options{Size: size, Inodes: inodes, UUID: testUUID, Time: testTime})
	fsck(t, img)
	st := w.Stats()
	slack := int64(st.BlocksTotal-st.BlocksUsed) * ext4spec.BlockSize
	t.Logf("plan %d MiB; %d blocks free (%d KiB)", size>>20, st.BlocksTotal-st.BlocksUsed, slack>>10)
	if slack >= 2*mib {
		t.Errorf("plan not tight: %d bytes free", slack)
	}

	// Smaller sizes fail cleanly with "filesystem full".
	for _, k := range []int64{1, 4, 64} {
		small := size - k*mib
		_, f := newImage(t, small)
		w, err := NewWriter(f, 0, Options{Size: small, Inodes: inodes})
		if err != nil {
			t.Fatal(err)
		}
		err = feedErr(t, w, ents)
		if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "filesystem full: need") {
			t.Errorf("size %d: %v", small, err)
		}
	}

	// Extra space is honoured.
	const extra = 100 << 20
	size2, inodes2, _ := plan(t, ents, extra)
	_, w2 := writeTree(t, ents, Options{Size: size2, Inodes: inodes2, Time: testTime})
	st2 := w2.Stats()
	if free := int64(st2.BlocksTotal-st2.BlocksUsed) * ext4spec.BlockSize; free < extra || free > extra+2*mib {
		t.Errorf("asked for %d free, got %d", extra, free)
	}
	if st2.InodesTotal-st2.InodesUsed < extra/(64<<10) {
		t.Errorf("free inodes %d", st2.InodesTotal-st2.InodesUsed)
	}
}

// TestLargeFS: a filesystem past 128 GiB gets a 1 GiB journal that crosses
// several superblock copies (an extent tree of its own) and many flex groups.
func TestLargeFS(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const size = 130 << 30
	img, _ := writeTree(t, []entry{{kind: 'f', h: Header{Name: "x", Mode: 0o644, Size: 3}, data: []byte("abc")}},
		Options{Size: size, UUID: testUUID, Time: testTime})
	fsck(t, img)
	out := debugfs(t, img, "stat <8>")
	// 262144 blocks cross the copies in groups 1, 3, 5, 7 and flex
	// metadata: more than 4 extents, so a tree with depth 1.
	if !strings.Contains(out, "Size: 1073741824") || !strings.Contains(out, "(ETB0)") {
		t.Errorf("journal:\n%s", out)
	}
}
