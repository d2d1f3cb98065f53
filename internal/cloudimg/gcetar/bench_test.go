package gcetar

import (
	"os"
	"testing"
	"time"
)

// BenchmarkWrite archives a 1 GiB sparse image holding 300 MiB of data: 1 MiB
// runs spread over the image, cut from this test binary (machine code and
// tables, about as compressible as a Nix store's).
func BenchmarkWrite(b *testing.B) {
	const size, runs, run = 1 << 30, 300, 1 << 20
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	text, err := os.ReadFile(exe)
	if err != nil || len(text) < 2*run {
		b.Fatalf("reading the test binary: %v (%d bytes)", err, len(text))
	}
	im := image{name: "bench", size: size}
	stride := int64(size/runs) &^ 4095
	for i := range runs {
		from := (i * 65537) % (len(text) - run)
		im.chunks = append(im.chunks, chunk{int64(i) * stride, text[from : from+run]})
	}
	src := im.create(b, b.TempDir())
	f, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var out countingWriter
	b.SetBytes(size)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		out = 0
		if err := Write(&out, f, "disk.raw", size, testMtime, nil); err != nil {
			b.Fatal(err)
		}
	}
	sec := time.Since(start).Seconds() / float64(b.N)
	b.ReportMetric(runs*run/1e6/sec, "data-MB/s")
	b.ReportMetric(float64(out)/(runs*run), "gz/data")
}

type countingWriter int64

func (w *countingWriter) Write(p []byte) (int, error) {
	*w += countingWriter(len(p))
	return len(p), nil
}
