package qemu

import (
	"strings"
	"testing"
)

func TestLineRing(t *testing.T) {
	r := newLineRing(3)
	r.Write([]byte("\x1b[2J\x1b[01;01Ha\r\nb\n"))
	r.Write([]byte("c\nd\ne"))
	if got := strings.Join(r.Tail(10), "|"); got != "b|c|d|e" {
		t.Errorf("tail %q", got)
	}
	if got := strings.Join(r.Tail(2), "|"); got != "d|e" {
		t.Errorf("tail(2) %q", got)
	}
	r.Write([]byte(strings.Repeat("x", 3*maxLine) + "\n"))
	if got := r.Tail(1)[0]; len(got) != maxLine {
		t.Errorf("long line kept %d bytes", len(got))
	}
}
