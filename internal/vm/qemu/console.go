package qemu

import (
	"io"
	"sync"
)

// maxLine bounds one ring line: a guest printing without newlines must not
// grow memory.
const maxLine = 4096

// lineRing keeps the last lines of a byte stream, for error messages.
// CRs and terminal escape sequences (OVMF draws with them) are dropped.
type lineRing struct {
	mu      sync.Mutex
	lines   []string
	next    int // index of the oldest line once full
	partial []byte
	esc     int // escape-sequence parser state: 0 text, 1 after ESC, 2 in CSI
}

func newLineRing(n int) *lineRing { return &lineRing{lines: make([]string, 0, n)} }

func (r *lineRing) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range p {
		switch r.esc {
		case 1:
			r.esc = 0
			if c == '[' {
				r.esc = 2
			}
			continue
		case 2:
			if c >= 0x40 && c <= 0x7e { // CSI final byte
				r.esc = 0
			}
			continue
		}
		switch {
		case c == 0x1b:
			r.esc = 1
		case c == '\n':
			r.push(string(r.partial))
			r.partial = r.partial[:0]
		case c == '\r' || c == 0:
		default:
			if len(r.partial) < maxLine {
				r.partial = append(r.partial, c)
			}
		}
	}
	return len(p), nil
}

func (r *lineRing) push(s string) {
	if len(r.lines) < cap(r.lines) {
		r.lines = append(r.lines, s)
		return
	}
	r.lines[r.next] = s
	r.next = (r.next + 1) % len(r.lines)
}

// Tail returns up to n of the last lines, the unfinished one included.
func (r *lineRing) Tail(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	all := make([]string, 0, len(r.lines)+1)
	all = append(all, r.lines[r.next:]...)
	all = append(all, r.lines[:r.next]...)
	if len(r.partial) > 0 {
		all = append(all, string(r.partial))
	}
	if n < 0 {
		n = 0
	}
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return all
}

// copyConsole forwards chunks as they arrive (a prompt without a newline
// is not held back) and feeds the line ring.
func copyConsole(r io.Reader, w io.Writer, ring *lineRing) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			ring.Write(buf[:n])
			if w != nil {
				if _, werr := w.Write(buf[:n]); werr != nil {
					w = nil // keep draining so QEMU never blocks on the pipe
				}
			}
		}
		if err != nil {
			return
		}
	}
}
