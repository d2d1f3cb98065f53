package uiprogress

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// tracker is Packer's BasicUi progress hook, recording what the bar saw:
// its total and the bytes read through it.
type tracker struct {
	mu    sync.Mutex
	total int64
	read  int64
	reads int64
}

func (tr *tracker) loadRead() int64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.read
}

func (tr *tracker) TrackProgress(_ string, _, total int64, stream io.ReadCloser) io.ReadCloser {
	tr.total = total
	return &counting{stream, tr}
}

type counting struct {
	io.ReadCloser
	tr *tracker
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.tr.mu.Lock()
	c.tr.read += int64(n)
	c.tr.reads++
	c.tr.mu.Unlock()
	return n, err
}

func newUi() (*packersdk.BasicUi, *tracker) {
	tr := &tracker{}
	return &packersdk.BasicUi{Writer: io.Discard, ErrorWriter: io.Discard, PB: tr}, tr
}

// Percent moves the bar to its share of the total, never backwards and
// never past the end.
func TestPercent(t *testing.T) {
	for _, c := range []struct {
		pcts []float64
		want int64
	}{{[]float64{0}, 0}, {[]float64{12.5}, 1250}, {[]float64{50, 40}, 5000}, {[]float64{100, 120}, 10000}, {[]float64{120}, 10000}} {
		ui, tr := newUi()
		b := New(ui, "x", 10000)
		for _, p := range c.pcts {
			b.Percent(p)
		}
		b.Close()
		if tr.read != c.want {
			t.Errorf("after Percent(%v): %d read, want %d", c.pcts, tr.read, c.want)
		}
		if tr.total != 10000 {
			t.Errorf("total %d", tr.total)
		}
	}
}

// Reader advances the bar by what passes through it; many readers share
// one bar.
func TestReader(t *testing.T) {
	ui, tr := newUi()
	b := New(ui, "x", 30)
	for _, s := range []string{"0123456789", "abcdefghij"} {
		var got bytes.Buffer
		if _, err := io.Copy(&got, b.Reader(io.NopCloser(strings.NewReader(s)))); err != nil {
			t.Fatal(err)
		}
		if got.String() != s {
			t.Errorf("read %q through the bar, want %q", got.String(), s)
		}
	}
	b.Close()
	b.Close() // twice is harmless
	if tr.read != 20 {
		t.Errorf("bar advanced %d, want 20", tr.read)
	}
}

// The bar moves while the work runs, not only at the end.
func TestFedWhileRunning(t *testing.T) {
	ui, tr := newUi()
	b := New(ui, "x", 100)
	defer b.Close()
	b.Add(40)
	for deadline := time.Now().Add(10 * time.Second); tr.loadRead() != 40; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the bar shows %d of 40 added", tr.loadRead())
		}
	}
}

// Progress never costs: 200,000 Adds (one a file) reach Packer as a few
// reads a second, not one each (each is an RPC round trip in a plugin).
// The first bar read once per Add.
func TestFewReadsForManyAdds(t *testing.T) {
	ui, tr := newUi()
	const files, size = 200000, 3000
	start := time.Now()
	b := New(ui, "x", files*size)
	for i := 0; i < files; i++ {
		b.Add(size)
	}
	b.Close()
	took := time.Since(start)
	if tr.read != files*size {
		t.Fatalf("bar advanced %d, want %d", tr.read, files*size)
	}
	// Per feed: ceil(pending / feedChunk) reads.
	feeds := int64(took/FeedEvery) + 2
	if max := feeds * (files*size/feedChunk + 1); tr.reads > max {
		t.Errorf("%d reads of the tracked stream for %d Adds in %v, want at most %d", tr.reads, files, took, max)
	}
	t.Logf("%d Adds in %v: %d reads", files, took, tr.reads)
}
