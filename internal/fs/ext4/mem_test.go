package ext4

import (
	"fmt"
	"runtime"
	"testing"
)

// TestMemoryBounded writes 300k small files in directories of 1000 and
// checks that the heap after 300k entries is not meaningfully larger than
// after 30k: nothing may be kept per file.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const dirs, per = 300, 1000
	payload := []byte("tiny file content, fifty bytes long, more or less.")
	gen := func(dir, i int) (Header, []byte) {
		h := Header{Name: fmt.Sprintf("d%03d/f%04d", dir, i), Mode: 0o644}
		if i%7 == 0 {
			h.Size = int64(len(payload))
			return h, payload
		}
		return h, nil
	}
	s := NewSizer()
	for d := 0; d < dirs; d++ {
		if err := s.Mkdir(Header{Name: fmt.Sprintf("d%03d", d), Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < per; i++ {
			h, _ := gen(d, i)
			if _, err := s.Create(h); err != nil {
				t.Fatal(err)
			}
		}
	}
	size, inodes := s.Plan(0)
	img, f := newImage(t, size)
	w, err := NewWriter(f, 0, Options{Size: size, Inodes: inodes, Time: testTime})
	if err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	var at30k uint64
	for d := 0; d < dirs; d++ {
		if d == 30 {
			at30k = heap()
		}
		if err := w.Mkdir(Header{Name: fmt.Sprintf("d%03d", d), Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < per; i++ {
			h, data := gen(d, i)
			fw, err := w.Create(h)
			if err != nil {
				t.Fatal(err)
			}
			if data != nil {
				if _, err := fw.Write(data); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	at300k := heap()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("heap in use: %d KiB at 30k files, %d KiB at 300k", at30k>>10, at300k>>10)
	if at300k > at30k+8<<20 {
		t.Errorf("heap grew from %d to %d bytes between 30k and 300k files", at30k, at300k)
	}
	fsck(t, img)
}
