package nixos

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

func collectLines(w func(*lineWriter)) []string {
	var got []string
	lw := newLineWriter(func(s string) { got = append(got, s) })
	w(lw)
	lw.Flush()
	return got
}

func TestLineWriterStripsEscapes(t *testing.T) {
	for in, want := range map[string]string{
		"\x1b[31mred\x1b[0m text":                  "red text",
		"\x1b]0;pwned title\x07after":              "after",
		"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\": "link",
		"\x1bPdcs stuff\x1b\\ok":                   "ok",
		"a\x1b(Bb\x1bcc\x1b7d":                     "abcd",
		"tab\tkept\rcr\bbs\x00nul\x7fdel":          "tab\tkeptcrbsnuldel",
		"c1\u009b31mcsi\u0085nel":                  "c131mcsinel",
		"bad\xffutf8 ünïcödé":                      "bad\uFFFDutf8 ünïcödé",
		"unterminated \x1b[12;":                    "unterminated ",
		"unterminated osc \x1b]0;title":            "unterminated osc ",
	} {
		got := collectLines(func(w *lineWriter) { w.Write([]byte(in + "\r\n")) })
		if len(got) != 1 || got[0] != want {
			t.Errorf("%q: lines %q; want %q", in, got, want)
		}
	}
}

func TestLineWriterLines(t *testing.T) {
	got := collectLines(func(w *lineWriter) {
		w.Write([]byte("one\ntw"))
		w.Write([]byte("o\r\n\nthree"))
	})
	if strings.Join(got, "|") != "one|two||three" {
		t.Errorf("lines %q", got)
	}
}

func TestLineWriterCap(t *testing.T) {
	long := strings.Repeat("x", 3*maxLineBytes)
	got := collectLines(func(w *lineWriter) {
		w.Write([]byte(long[:maxLineBytes-10]))
		w.Write([]byte(long[maxLineBytes-10:]))
		w.Write([]byte("still the long line\nnext\n"))
	})
	if len(got) != 2 {
		t.Fatalf("%d lines; want the cut line and next", len(got))
	}
	if want := strings.Repeat("x", maxLineBytes) + lineCutMark; got[0] != want {
		t.Errorf("cut line is %d bytes, ends %q; want %d bytes ending %q", len(got[0]), got[0][len(got[0])-30:], len(want), lineCutMark)
	}
	if got[1] != "next" {
		t.Errorf("line after the cut = %q", got[1])
	}
	// A guest that never sends a newline is bounded all the same.
	lw := newLineWriter(func(string) {})
	for range 100 {
		lw.Write([]byte(long))
	}
	if lw.buf.Len() > maxLineBytes {
		t.Errorf("buffered %d bytes", lw.buf.Len())
	}
	// Multi-byte runes are not split, and the sanitized line stays capped.
	got = collectLines(func(w *lineWriter) { w.Write([]byte("a" + strings.Repeat("é", maxLineBytes) + "\n")) })
	if len(got) != 1 || !utf8.ValidString(got[0]) || len(got[0]) > maxLineBytes+len(lineCutMark) || !strings.HasSuffix(got[0], lineCutMark) {
		t.Errorf("cut multi-byte line: %d bytes, valid %v", len(got[0]), utf8.ValidString(got[0]))
	}
	got = collectLines(func(w *lineWriter) { w.Write([]byte(strings.Repeat("\xff.", maxLineBytes/2) + "\n")) })
	if len(got) != 1 || len(got[0]) > maxLineBytes+len(lineCutMark) {
		t.Errorf("invalid UTF-8 line grew to %d bytes", len(got[0]))
	}
}

// escVM is a VM whose console tail holds terminal escapes.
type escVM struct{ qemu.VM }

func (escVM) ConsoleTail(int) []string { return []string{"\x1b[2Jcleared\x1b]0;title\x07", "ok"} }

// TestConsoleTailSanitized: the console lines an installer failure quotes
// reach the UI without escapes.
func TestConsoleTailSanitized(t *testing.T) {
	err := (&stepInstall{vm: escVM{}}).vmError("booting", errors.New("died"))
	if strings.ContainsRune(err.Error(), 0x1b) || !strings.Contains(err.Error(), "cleared\n  ok") {
		t.Errorf("vmError = %q", err)
	}
}
