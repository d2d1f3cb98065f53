package ext4

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

var testUUID = [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
var testSeed = [16]byte{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01}

const testTime = 1700000000

func requireTool(t testing.TB, name string) { t.Helper(); imagecheck.RequireTool(t, name) }

// newImage creates a sparse file of size bytes.
func newImage(t testing.TB, size int64) (string, *os.File) {
	t.Helper()
	return imagecheck.SparseFile(t, "fs.img", size)
}

// fsck and debugfs check a whole-file image with internal/testkit/imagecheck's oracles.
func fsck(t testing.TB, img string) { t.Helper(); imagecheck.Fsck(t, imagecheck.FS{Image: img}) }

func debugfs(t testing.TB, img, cmd string) string {
	t.Helper()
	return imagecheck.Debugfs(t, imagecheck.FS{Image: img}, cmd)
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:8]) }

// entry is one item of a test tree, with what should read back.
type entry struct {
	kind   byte // 'd' dir, 'f' file, 'l' symlink, 'h' hard link
	h      Header
	data   []byte           // small files
	sparse map[int64][]byte // big sparse files: offset -> bytes
	target string           // symlink target, or hard link source path
	links  int              // expected link count (files)
}

func content(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

// feed writes entries in order. For sparse entries it builds a sparse
// source file and uses ReadFrom (the SEEK_DATA/copy_file_range path).
func feed(t testing.TB, s any, ents []entry) {
	t.Helper()
	inos := map[string]uint32{}
	for _, e := range ents {
		var err error
		switch w := s.(type) {
		case *Writer:
			err = feedWriter(t, w, e, inos)
		case *Sizer:
			switch e.kind {
			case 'd':
				err = w.Mkdir(e.h)
			case 'f':
				var ino uint32
				ino, err = w.Create(e.h)
				inos[e.h.Name] = ino
			case 'l':
				err = w.Symlink(e.h, e.target)
			case 'h':
				err = w.Link(e.h.Name, inos[e.target])
			}
		}
		if err != nil {
			t.Fatalf("%c %s: %v", e.kind, e.h.Name, err)
		}
	}
}

func feedWriter(t testing.TB, w *Writer, e entry, inos map[string]uint32) error {
	switch e.kind {
	case 'd':
		return w.Mkdir(e.h)
	case 'l':
		return w.Symlink(e.h, e.target)
	case 'h':
		return w.Link(e.h.Name, inos[e.target])
	}
	f, err := w.Create(e.h)
	if err != nil {
		return err
	}
	inos[e.h.Name] = f.Inode()
	if e.sparse == nil {
		// Odd-sized writes exercise the staging buffer.
		for p := e.data; len(p) > 0; {
			n := min(len(p), 7919)
			if _, err := f.Write(p[:n]); err != nil {
				return err
			}
			p = p[n:]
		}
		return nil
	}
	src, err := os.Create(filepath.Join(t.TempDir(), "sparse-src"))
	if err != nil {
		return err
	}
	defer src.Close()
	if err := src.Truncate(e.h.Size); err != nil {
		return err
	}
	for off, b := range e.sparse {
		if _, err := src.WriteAt(b, off); err != nil {
			return err
		}
	}
	n, err := f.ReadFrom(src)
	if err == nil && n != e.h.Size {
		err = fmt.Errorf("ReadFrom copied %d of %d", n, e.h.Size)
	}
	return err
}

// readSparse returns the expected bytes of a sparse entry in [off, off+n).
func (e *entry) expectAt(off, n int64) []byte {
	if e.sparse == nil {
		return e.data[off : off+n]
	}
	b := make([]byte, n)
	for o, d := range e.sparse {
		for i := range d {
			if p := o + int64(i) - off; p >= 0 && p < n {
				b[p] = d[i]
			}
		}
	}
	return b
}

func (e *entry) expectSHA() string {
	if e.sparse == nil {
		return fileSHAbytes(e.data)
	}
	h := sha256.New()
	const chunk = 1 << 20
	for off := int64(0); off < e.h.Size; off += chunk {
		h.Write(e.expectAt(off, min(chunk, e.h.Size-off)))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHAbytes(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

var _ = bytes.Equal
