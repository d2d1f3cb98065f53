package ext4

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// shadowLines is an unsorted /etc/shadow of n accounts (~120 bytes each).
func shadowLines(n int) []byte {
	lines := make([]string, n)
	for i := range lines {
		lines[i] = fmt.Sprintf("user%04d:$6$%s:19000:0:99999:7:::", i, strings.Repeat("h", 90))
	}
	rand.New(rand.NewSource(1)).Shuffle(n, func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	return []byte(strings.Join(lines, "\n") + "\n")
}

// fragImage makes a mkfs.ext4 -d image, then has debugfs write
// one-block files, remove every other one and write data at path: its
// blocks land in the holes, one extent each, so the file needs an extent
// tree block (more than 4 extents).
func fragImage(t testing.TB, size int64, path string, data []byte, opts ...string) string {
	t.Helper()
	imagecheck.RequireTool(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := mkfs(t, size, append(opts, "-d", root)...)
	blk, src := filepath.Join(dir, "blk"), filepath.Join(dir, "src")
	if err := os.WriteFile(blk, bytes.Repeat([]byte{0x5a}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for i := 0; i < 16; i++ {
		cmds = append(cmds, fmt.Sprintf("write %s /f%d", blk, i))
	}
	for i := 1; i < 16; i += 2 {
		cmds = append(cmds, fmt.Sprintf("rm /f%d", i))
	}
	cmds = append(cmds, fmt.Sprintf("write %s %s", src, path))
	cf := filepath.Join(dir, "cmds")
	if err := os.WriteFile(cf, []byte(strings.Join(cmds, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "debugfs", "-w", "-f", cf, img)
	return img
}

func mkfsDir(t testing.TB, size int64, root string) string {
	t.Helper()
	return mkfs(t, size, "-d", root)
}

// countExtents is how many leaf extents debugfs lists for path.
func countExtents(t testing.TB, img, path string) int {
	out := imagecheck.Debugfs(t, imagecheck.FS{Image: img}, "ex "+path)
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "1/") {
			n++
		}
	}
	return n
}

// issue 11 finding 3: the reader follows an extent tree with an external
// leaf block (debugfs "blocks" lists it too, which made the old rewrite
// refuse a dense file), and Rewrite writes only the file's data blocks.
func TestReadFragmentedAndRewrite(t *testing.T) {
	data := shadowLines(300)
	img := fragImage(t, 32<<20, "/etc/shadow", data)
	if n := countExtents(t, img, "/etc/shadow"); n < 6 {
		t.Fatalf("/etc/shadow has %d extents, the test needs at least 6", n)
	}
	fs, err := Open(openRW(t, img), 0, 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := fs.Lookup("/etc/shadow")
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.ReadFile(fl)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadFile: %d bytes, %v; want the %d written", len(got), err, len(data))
	}
	sorted := []byte(strings.Join(sortedLines(data), "\n") + "\n")
	if err := fs.Rewrite(fl, sorted); err != nil {
		t.Fatal(err)
	}
	if out := imagecheck.Debugfs(t, imagecheck.FS{Image: img}, "cat /etc/shadow"); out != string(sorted) {
		t.Errorf("debugfs cat after Rewrite: %d bytes, not the sorted file", len(out))
	}
	imagecheck.Fsck(t, imagecheck.FS{Image: img})
	if _, err := fs.Lookup("/etc/nothing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup of a missing file: %v", err)
	}
	if _, err := fs.Lookup("/etc/hostname/x"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup through a regular file: %v", err)
	}
}

func runStatus(name string, args ...string) error {
	return exec.Command(name, args...).Run()
}

func sortedLines(b []byte) []string {
	l := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	sort.Strings(l)
	return l
}

// A file with a hole is read with zeros there but never rewritten: its
// block count can match a fragmented file's tree blocks (issue 11 finding 3).
func TestCheckRewriteRefusesSparse(t *testing.T) {
	data := append(append(shadowLines(40), make([]byte, 8192)...), shadowLines(40)...)
	img := fragImage(t, 32<<20, "/etc/subgid", data)
	sum := imagecheck.SHA256File(t, img)
	fs, err := Open(openRW(t, img), 0, 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := fs.Lookup("/etc/subgid")
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.ReadFile(fl)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadFile of a sparse file: %v", err)
	}
	err = fs.Rewrite(fl, bytes.Repeat([]byte{'x'}, len(data)))
	if err == nil || !strings.Contains(err.Error(), "hole") {
		t.Fatalf("Rewrite of a sparse file: %v", err)
	}
	if imagecheck.SHA256File(t, img) != sum {
		t.Error("a refused Rewrite changed the image")
	}
}

// Lookup scans htree directories linearly (e2fsck -D indexes them).
func TestLookupHtree(t *testing.T) {
	imagecheck.RequireTool(t, "e2fsck")
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/many"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2000; i++ {
		name := filepath.Join(root, "etc/many", fmt.Sprintf("entry-with-a-long-name-%05d", i))
		if err := os.WriteFile(name, []byte(fmt.Sprint(i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := mkfsDir(t, 32<<20, root)
	_ = runStatus("e2fsck", "-fyD", img) // exit 1: "file system was modified"
	if out := imagecheck.Debugfs(t, imagecheck.FS{Image: img}, "htree /etc/many"); !strings.Contains(out, "Root node dump") {
		t.Fatalf("/etc/many is not an htree:\n%.300s", out)
	}
	fs, err := Open(openRW(t, img), 0, 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 777, 1999} {
		fl, err := fs.Lookup(fmt.Sprintf("/etc/many/entry-with-a-long-name-%05d", i))
		if err != nil {
			t.Fatal(err)
		}
		if b, err := fs.ReadFile(fl); err != nil || string(b) != fmt.Sprint(i) {
			t.Errorf("entry %d: %q, %v", i, b, err)
		}
	}
}
