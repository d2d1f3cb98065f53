package guest

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := &frameWriter{w: &buf}
	big := bytes.Repeat([]byte("x"), MaxPayload)
	for _, f := range []frame{{frameRequest, 1, []byte(`{"op":"hello"}`)}, {frameStdin, 7, nil}, {frameData, 1 << 31, big}} {
		if err := fw.write(f.typ, f.id, f.payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.write(frameData, 1, make([]byte, MaxPayload+1)); err == nil {
		t.Error("oversized payload accepted")
	}
	fr := newFrameReader(&buf, false)
	for _, want := range []frame{{frameRequest, 1, []byte(`{"op":"hello"}`)}, {frameStdin, 7, []byte{}}, {frameData, 1 << 31, big}} {
		got, err := fr.read()
		if err != nil {
			t.Fatal(err)
		}
		if got.typ != want.typ || got.id != want.id || !bytes.Equal(got.payload, want.payload) {
			t.Fatalf("got %c/%d/%d bytes, want %c/%d/%d bytes", got.typ, got.id, len(got.payload), want.typ, want.id, len(want.payload))
		}
	}
	if _, err := fr.read(); err != io.EOF {
		t.Fatalf("want EOF at the end, got %v", err)
	}
}

// TestFrameResync: the agent skips what a dropped half-frame leaves behind.
func TestFrameResync(t *testing.T) {
	var good bytes.Buffer
	fw := &frameWriter{w: &good}
	fw.write(frameRequest, 3, []byte(`{"op":"sync"}`))
	cut := append([]byte{}, good.Bytes()[5:]...) // the tail of a frame whose head was dropped
	stream := append(append(cut, []byte("NXjunk")...), good.Bytes()...)

	fr := newFrameReader(bytes.NewReader(stream), true)
	f, err := fr.read()
	if err != nil || f.id != 3 || string(f.payload) != `{"op":"sync"}` {
		t.Fatalf("resync failed: %+v %v", f, err)
	}
	if fr.skipped != len(cut)+6 {
		t.Errorf("skipped %d bytes, want %d", fr.skipped, len(cut)+6)
	}
	strict := newFrameReader(bytes.NewReader(stream), false)
	if _, err := strict.read(); !errors.Is(err, errFraming) {
		t.Errorf("strict reader: want a framing error, got %v", err)
	}
	short := newFrameReader(bytes.NewReader(good.Bytes()[:good.Len()-1]), false)
	if _, err := short.read(); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated frame: got %v", err)
	}
}

func TestParseOptions(t *testing.T) {
	flags, data := parseOptions("ro,nosuid,umask=077,defaults,rw,noexec,iocharset=ascii")
	if flags != mountFlags["nosuid"].flag|mountFlags["noexec"].flag || data != "umask=077,iocharset=ascii" {
		t.Errorf("flags %#x data %q", flags, data)
	}
	if got := unescapeMountinfo(`/a\040b\134c`); got != `/a b\c` {
		t.Errorf("unescape: %q", got)
	}
}
