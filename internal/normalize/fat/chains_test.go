package fat

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fattest"
)

// chainImage is mkfs.vfat's 64 MiB FAT32 with, through mtools, a
// directory DIR holding a file, and files A.BIN and B.BIN of three
// clusters each; g is its geometry.
func chainImage(t *testing.T) (string, geometry) {
	p := mkfsFAT32(t, 64<<10)
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, bytes.Repeat([]byte{7}, 1500), 0o644); err != nil {
		t.Fatal(err)
	}
	fattest.Mtools(t, "mmd", "-i", p, "::/DIR")
	fattest.Mtools(t, "mcopy", "-i", p, src, "::/DIR/IN.BIN")
	fattest.Mtools(t, "mcopy", "-i", p, src, "::/A.BIN")
	fattest.Mtools(t, "mcopy", "-i", p, src, "::/B.BIN")
	return p, bpb(t, p, 0)
}

// Issue 11 finding 2: chains are followed once per cluster. A directory
// whose chain loops is refused at the first cluster seen twice (the old
// code had this guard too; this keeps it). Files' chains were not followed
// at all: a file cross-linked with another, or whose chain runs into a
// cluster the FAT calls free, was accepted, and in the second case the old
// code zeroed the file's data as a free cluster's leftovers. Both are
// refused now, the image unchanged.
func TestNormalizeChains(t *testing.T) {
	t.Run("DirectoryLoops", func(t *testing.T) {
		p, g := chainImage(t)
		_, dir := g.rootEntry(t, p, "DIR        ")
		g.setFAT(t, p, dir, dir)
		normRefuse(t, p, nil, "already in use (cross-linked or looping chain)")
	})
	t.Run("FilesCrossLinked", func(t *testing.T) {
		p, g := chainImage(t)
		_, a := g.rootEntry(t, p, "A       BIN")
		at, _ := g.rootEntry(t, p, "B       BIN")
		patchFile(t, p, at+20, 8, func(e []byte) { // the cluster's high and low halves
			le.PutUint16(e[0:], uint16(a>>16))
			le.PutUint16(e[6:], uint16(a))
		})
		normRefuse(t, p, nil, "file /B.BIN: cluster")
	})
	t.Run("FileRunsIntoFree", func(t *testing.T) {
		p, g := chainImage(t)
		_, a := g.rootEntry(t, p, "A       BIN")
		g.setFAT(t, p, a+1, 0) // its second cluster, still holding its data
		normRefuse(t, p, nil, "file /A.BIN: its cluster 8 is marked free or bad")
	})
}
