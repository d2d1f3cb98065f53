package uiprogress

import (
	"bytes"
	"io"
	"strings"
	"testing"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// tracker is Packer's BasicUi progress hook, recording what the bar saw:
// its total and the bytes read through it.
type tracker struct {
	total int64
	read  int64
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
	c.tr.read += int64(n)
	return n, err
}

func newUi() (*packersdk.BasicUi, *tracker) {
	tr := &tracker{}
	return &packersdk.BasicUi{Writer: io.Discard, ErrorWriter: io.Discard, PB: tr}, tr
}

// Percent moves the bar to its share of the total, never backwards and
// never past the end.
func TestPercent(t *testing.T) {
	ui, tr := newUi()
	b := New(ui, "x", 10000)
	defer b.Close()
	for _, c := range []struct {
		pct  float64
		want int64
	}{{0, 0}, {12.5, 1250}, {50, 5000}, {40, 5000}, {100, 10000}, {120, 10000}} {
		b.Percent(c.pct)
		if tr.read != c.want {
			t.Errorf("after Percent(%v): %d read, want %d", c.pct, tr.read, c.want)
		}
	}
	if tr.total != 10000 {
		t.Errorf("total %d", tr.total)
	}
}

// Reader advances the bar by what passes through it; many readers share
// one bar.
func TestReader(t *testing.T) {
	ui, tr := newUi()
	b := New(ui, "x", 30)
	defer b.Close()
	for _, s := range []string{"0123456789", "abcdefghij"} {
		var got bytes.Buffer
		if _, err := io.Copy(&got, b.Reader(io.NopCloser(strings.NewReader(s)))); err != nil {
			t.Fatal(err)
		}
		if got.String() != s {
			t.Errorf("read %q through the bar, want %q", got.String(), s)
		}
	}
	if tr.read != 20 {
		t.Errorf("bar advanced %d, want 20", tr.read)
	}
}
