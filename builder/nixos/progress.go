package nixos

import (
	"fmt"
	"io"
	"time"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// progress drives Packer's progress bar from byte counts: the bar wraps a
// reader, so it is fed by reading the counted number of bytes through it.
type progress struct {
	src     *countSource
	tracked io.ReadCloser
	buf     []byte

	// Packer draws the bar only on a terminal; CI logs get a line now and then.
	ui          packersdk.Ui
	done, total int64
	lastLine    time.Time
}

type countSource struct{ pending int64 }

func (c *countSource) Read(p []byte) (int, error) {
	if c.pending == 0 {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > c.pending {
		n = c.pending
	}
	c.pending -= n
	return int(n), nil
}

func newProgress(ui packersdk.Ui, name string, total int64) *progress {
	src := &countSource{}
	return &progress{src: src, tracked: ui.TrackProgress(name, 0, total, io.NopCloser(src)), buf: make([]byte, 32<<10),
		ui: ui, total: total, lastLine: time.Now()}
}

const progressLineEvery = 15 * time.Second

func (p *progress) Add(n int64) {
	p.done += n
	if time.Since(p.lastLine) >= progressLineEvery {
		p.lastLine = time.Now()
		p.ui.Message(fmt.Sprintf("%s of %s written (%d%%)", humanBytes(p.done), humanBytes(p.total), p.done*100/max(p.total, 1)))
	}
	p.src.pending += n
	for p.src.pending > 0 {
		if _, err := p.tracked.Read(p.buf); err != nil {
			return
		}
	}
}

func (p *progress) Close() { p.tracked.Close() }
