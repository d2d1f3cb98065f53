package ext4

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// makeSourceTree writes n files of mixed sizes (mostly small, some large,
// like a Nix closure) under dir and returns their total size.
func makeSourceTree(b *testing.B, dir string, n int) int64 {
	r := rand.New(rand.NewPCG(9, 9))
	var total int64
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(r.UintN(255) + 1)
	}
	for i := 0; i < n; i++ {
		if i%100 == 0 {
			if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("pkg%03d/lib", i/100)), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		var sz int
		switch p := r.IntN(100); {
		case p < 70:
			sz = r.IntN(4096)
		case p < 95:
			sz = 4096 + r.IntN(60<<10)
		default:
			sz = 64<<10 + r.IntN(2<<20)
		}
		name := filepath.Join(dir, fmt.Sprintf("pkg%03d/lib/f%05d", i/100, i))
		if err := os.WriteFile(name, buf[r.IntN(1<<20):][:sz], 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(sz)
	}
	return total
}

// writeHostTree copies a host directory into w in a sorted walk.
func writeHostTree(w interface {
	Mkdir(Header) error
	Create(Header) (*File, error)
}, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		h := Header{Name: filepath.ToSlash(rel), Mode: info.Mode().Perm(), Mtime: 1, Size: info.Size()}
		if d.IsDir() {
			h.Size = 0
			return w.Mkdir(h)
		}
		f, err := w.Create(h)
		if err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = f.ReadFrom(src)
		return err
	})
}

func BenchmarkWriter20k(b *testing.B) {
	src := b.TempDir()
	const n = 20000
	total := makeSourceTree(b, src, n)
	size := total*2 + 256<<20
	size -= size % mib
	out := filepath.Join(b.TempDir(), "img")
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f, err := os.Create(out)
		if err != nil {
			b.Fatal(err)
		}
		f.Truncate(size)
		w, err := NewWriter(f, 0, Options{Size: size, Time: 1})
		if err != nil {
			b.Fatal(err)
		}
		if err := writeHostTree(w, src); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "files/s")
}
