package ext4

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// holeReader gives a sparse file's bytes, holes as zeros, and lets the copy
// see a file shorter or longer than its header says; plainData finds holes
// and zero blocks (a partial last block included) and leaves the offset at
// the start.
func TestHoleReader(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, 5<<20+7)
	copy(want, "head")
	copy(want[3<<20:], "middle")
	copy(want[len(want)-4:], "tail")
	for _, at := range []int{0, 3 << 20, len(want) - 4} {
		if _, err := f.WriteAt(want[at:min(at+8, len(want))], int64(at)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(int64(len(want))); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, scanBuf)
	for _, size := range []int64{int64(len(want)), int64(len(want)) - 3, int64(len(want)) + 3} {
		got, err := io.ReadAll(&holeReader{f: f, size: size})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) { // the file's bytes, whatever size says
			t.Errorf("size %d: read %d bytes, want the file's %d", size, len(got), len(want))
		}
		if plain, err := plainData(f, size, buf); err != nil || plain {
			t.Errorf("plainData(sparse, %d) = %v, %v", size, plain, err)
		}
	}

	dense := bytes.Repeat([]byte("0123456789abcdef"), 300<<10/16)
	for _, tc := range []struct {
		data  []byte
		plain bool
	}{
		{dense, true},
		{append(dense[:len(dense):len(dense)], 'x'), true},
		{append(dense[:len(dense):len(dense)], 0), false}, // the last block: one zero byte
		{append(append(dense[:8192:8192], make([]byte, 4096)...), dense...), false},
		{append(append(dense[:8191:8191], make([]byte, 4096)...), dense...), true}, // not aligned
	} {
		p := filepath.Join(t.TempDir(), "g")
		if err := os.WriteFile(p, tc.data, 0o444); err != nil {
			t.Fatal(err)
		}
		g, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := plainData(g, int64(len(tc.data)), buf)
		if off, _ := g.Seek(0, io.SeekCurrent); err != nil || plain != tc.plain || off != 0 {
			t.Errorf("%d bytes: plainData = %v, %v, offset %d; want %v at 0", len(tc.data), plain, err, off, tc.plain)
		}
		g.Close()
	}
}
