package hosttree

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// On a filesystem that shares blocks (XFS with reflink here, on a loop
// device), a tree written into an image on the same filesystem is not
// copied: copy_file_range clones the files' blocks into the image, which
// FIEMAP then reports as shared. Checked on the image's bytes too.
func TestReflinkedIntoImage(t *testing.T) {
	mnt := imagecheck.ReflinkDir(t)

	src := filepath.Join(mnt, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewSource(2))
	big := make([]byte, 64<<20+123)
	r.Read(big)
	if err := os.WriteFile(filepath.Join(src, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(mnt, "image")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 256 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	w, err := ext4.NewWriter(f, 0, ext4.Options{Size: size, Time: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Copier{T: Writer(w, nil)}).Copy(context.Background(), src, "tree"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	shared := imagecheck.SharedBytes(t, f)
	t.Logf("%d MiB of the image share blocks with the tree", shared>>20)
	if shared < 64<<20 {
		t.Errorf("only %d bytes of the image are shared: the 64 MiB file was copied, not cloned", shared)
	}
	// The file reads back from the image (debugfs) as it was written.
	out, err := exec.Command("debugfs", "-R", "cat /tree/big", img).Output()
	if err != nil || !bytes.Equal(out, big) {
		t.Errorf("debugfs cat /tree/big: %v, %d bytes, equal %v", err, len(out), bytes.Equal(out, big))
	}
}
