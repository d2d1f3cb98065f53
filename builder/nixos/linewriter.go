package nixos

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// maxLineBytes caps one line passed to the UI: the guest writes the console
// and command output, and may never send a newline.
const maxLineBytes = 4096

// lineCutMark ends a line cut at maxLineBytes.
var lineCutMark = fmt.Sprintf(" [line cut at %d bytes]", maxLineBytes)

// lineWriter turns a byte stream from the guest into whole lines for the
// UI: each at most maxLineBytes (the rest up to the newline is dropped and
// the cut marked), with terminal escape sequences and control characters
// other than tab removed (uiSafe).
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	cut  bool // the current line was emitted cut: drop up to its newline
	emit func(string)
}

func newLineWriter(emit func(string)) *lineWriter { return &lineWriter{emit: emit} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if !w.cut {
			if room := maxLineBytes - w.buf.Len(); len(chunk) > room {
				w.buf.Write(chunk[:room])
				w.emitLine(true)
				w.cut = true
			} else {
				w.buf.Write(chunk)
			}
		}
		if i < 0 {
			break
		}
		if w.cut {
			w.cut = false
		} else {
			w.emitLine(false)
		}
		p = p[i+1:]
	}
	return n, nil
}

// emitLine emits the buffered line, cut when the guest's was longer.
func (w *lineWriter) emitLine(cut bool) {
	line := uiSafe(w.buf.String())
	w.buf.Reset()
	if len(line) > maxLineBytes {
		line, cut = truncateUTF8(line, maxLineBytes), true
	}
	if cut {
		line += lineCutMark
	}
	w.emit(line)
}

func (w *lineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() > 0 {
		w.emitLine(false)
	}
	w.cut = false
}

// truncateUTF8 cuts s to at most n bytes at a rune boundary.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// uiSafe removes from text the guest wrote what a terminal would act on:
// escape sequences (CSI, OSC, DCS, SOS, PM, APC, and two-character ones,
// dropped whole, an unterminated one to the end), C0 controls other than
// tab, DEL, and C1 controls (U+0080–U+009F, which include the 8-bit CSI).
// Invalid UTF-8 becomes U+FFFD.
func uiSafe(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == 0x1b:
			i += escapeLen(s[i:])
			continue
		case r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// escapeLen is the length of the escape sequence s starts with (s[0] is
// ESC), or len(s) when it does not end in s.
func escapeLen(s string) int {
	if len(s) < 2 {
		return len(s)
	}
	switch s[1] {
	case '[': // CSI: parameters and intermediates 0x20–0x3F, final 0x40–0x7E
		for i := 2; i < len(s); i++ {
			if c := s[i]; c >= 0x40 && c <= 0x7e {
				return i + 1
			} else if c < 0x20 || c > 0x3f {
				return i // malformed: drop what was seen
			}
		}
		return len(s)
	case ']', 'P', 'X', '^', '_': // OSC, DCS, SOS, PM, APC: to BEL or ST (ESC \)
		for i := 2; i < len(s); i++ {
			if s[i] == 0x07 {
				return i + 1
			}
			if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '\\' {
				return i + 2
			}
		}
		return len(s)
	}
	// nF (intermediates 0x20–0x2F, then a final) or a two-character one.
	i := 1
	for i < len(s) && s[i] >= 0x20 && s[i] <= 0x2f {
		i++
	}
	if i < len(s) && s[i] >= 0x30 && s[i] <= 0x7e {
		i++
	}
	return i
}
