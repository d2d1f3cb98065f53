// Package uiprogress drives Packer's progress bar (ui.TrackProgress) from
// work that reports how far it is rather than handing over a stream: a
// child process's percentage, or many small copies that share one bar.
//
// Through a plugin's RPC link every read of the tracked stream is one
// round trip to Packer, which then allocates a buffer of the read's size.
// So the work only counts (an atomic add) and the bar is fed from its own
// goroutine a few times a second, in reads of at most feedChunk bytes:
// progress costs the same whether the work is 10 files or 200,000.
package uiprogress

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

const (
	// FeedEvery is how often the bar is fed.
	FeedEvery = 200 * time.Millisecond
	// feedChunk bounds one read of the tracked stream (and the buffer
	// Packer allocates for it).
	feedChunk = 4 << 20
)

// Bar is one progress bar over total units.
type Bar struct {
	tot     int64
	counted atomic.Int64 // units the work reported
	fed     int64        // units read through the bar (feeder goroutine only)

	bar  io.ReadCloser
	src  *countSource
	buf  []byte
	stop chan struct{}
	done sync.WaitGroup
	once sync.Once

	// Optional status lines, for logs where Packer draws no bar.
	ui       packersdk.Ui
	every    time.Duration
	line     func(done, total int64) string
	lastLine time.Time
}

// New opens a bar named name over total units.
func New(ui packersdk.Ui, name string, total int64) *Bar {
	src := &countSource{}
	b := &Bar{
		tot:  total,
		src:  src,
		bar:  ui.TrackProgress(name, 0, total, io.NopCloser(src)),
		buf:  make([]byte, min(max(total, 1), feedChunk)),
		stop: make(chan struct{}),
		ui:   ui,
	}
	b.done.Add(1)
	go b.feed()
	return b
}

// Lines also says line(done, total) every d: Packer draws the bar only on
// a terminal, and CI logs would otherwise show nothing for minutes.
func (b *Bar) Lines(d time.Duration, line func(done, total int64) string) *Bar {
	b.every, b.line, b.lastLine = d, line, time.Now()
	return b
}

// Add advances the bar by n units. It only counts: cheap enough to call
// once a file.
func (b *Bar) Add(n int64) {
	if n > 0 {
		b.counted.Add(n)
	}
}

// Percent moves the bar to pct percent of its total, never backwards.
func (b *Bar) Percent(pct float64) {
	want := int64(pct / 100 * float64(b.tot))
	for {
		cur := b.counted.Load()
		if want <= cur || b.counted.CompareAndSwap(cur, want) {
			return
		}
	}
}

// Close feeds what is left and removes the bar. It may be called twice.
func (b *Bar) Close() {
	b.once.Do(func() {
		close(b.stop)
		b.done.Wait()
		b.bar.Close()
	})
}

func (b *Bar) feed() {
	defer b.done.Done()
	t := time.NewTicker(FeedEvery)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			b.flush()
			return
		case <-t.C:
			b.flush()
		}
	}
}

// flush reads what was counted since the last flush through the bar.
func (b *Bar) flush() {
	n := min(b.counted.Load(), b.tot) - b.fed
	if n <= 0 {
		return
	}
	b.fed += n
	b.src.pending += n
	for b.src.pending > 0 {
		if _, err := b.bar.Read(b.buf); err != nil {
			b.src.pending = 0
		}
	}
	if b.line != nil && time.Since(b.lastLine) >= b.every {
		b.lastLine = time.Now()
		b.ui.Message(b.line(b.fed, b.tot))
	}
}

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

// countSource is the stream the bar is drawn over: each read yields (as
// many bytes as asked, up to) what is pending; TrackProgress counts it.
type countSource struct{ pending int64 }

func (c *countSource) Read(p []byte) (int, error) {
	if c.pending == 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), c.pending)
	c.pending -= n
	return int(n), nil
}
