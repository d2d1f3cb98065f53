package fat

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fattest"
)

// BenchmarkWrite writes a 1 GiB ESP holding 256 MiB in 32 files of 8 MiB,
// from memory (Write) and from files (copy_file_range).
func BenchmarkWrite(b *testing.B) {
	const size, fileSize, files = 1 << 30, 8 << 20, 32
	data := fattest.Random(5, fileSize)
	src := filepath.Join(b.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"memory", "file"} {
		b.Run(mode, func(b *testing.B) {
			_, f := newImage(b, size)
			b.SetBytes(files * fileSize)
			for b.Loop() {
				w, err := NewWriter(f, 0, Options{Size: size, Label: "ESP", Time: testTime})
				if err != nil {
					b.Fatal(err)
				}
				for i := range files {
					fw, err := w.Create(Header{Name: fmt.Sprintf("kernel-%02d.efi", i), Mode: 0o644, Size: fileSize})
					if err != nil {
						b.Fatal(err)
					}
					var r io.Reader = bytes.NewReader(data)
					if mode == "file" {
						s, err := os.Open(src)
						if err != nil {
							b.Fatal(err)
						}
						defer s.Close()
						r = s
					}
					if _, err := io.Copy(fw, r); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
