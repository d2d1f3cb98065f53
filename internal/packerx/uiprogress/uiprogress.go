// Package uiprogress drives Packer's progress bar (ui.TrackProgress) from
// work that reports how far it is rather than handing over a stream: a
// child process's percentage, or many small copies that share one bar.
package uiprogress

import (
	"io"
	"sync"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// Bar is one progress bar over total units.
type Bar struct {
	mu   sync.Mutex
	bar  io.ReadCloser
	done int64
	tot  int64
}

// New opens a bar named name over total units.
func New(ui packersdk.Ui, name string, total int64) *Bar {
	return &Bar{bar: ui.TrackProgress(name, 0, total, io.NopCloser(zeros{})), tot: total}
}

// Add advances the bar by n units.
func (b *Bar) Add(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.tot-b.done {
		n = b.tot - b.done
	}
	if n > 0 {
		io.CopyN(io.Discard, b.bar, n) //nolint:errcheck // zeros never fail
		b.done += n
	}
}

// Percent moves the bar to pct percent of its total, never backwards.
func (b *Bar) Percent(pct float64) {
	b.mu.Lock()
	want := int64(pct / 100 * float64(b.tot))
	n := want - b.done
	b.mu.Unlock()
	b.Add(n)
}

// Close removes the bar.
func (b *Bar) Close() { b.bar.Close() }

// Reader wraps rd so that what is read from it advances the bar.
func (b *Bar) Reader(rd io.ReadCloser) io.ReadCloser { return &counted{rd, b} }

type counted struct {
	io.ReadCloser
	b *Bar
}

func (c *counted) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.b.Add(int64(n))
	return n, err
}

// zeros is the stream the bar is drawn over: TrackProgress counts what is
// read through it.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}
