package protocol

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	big := bytes.Repeat([]byte("x"), MaxPayload)
	for _, f := range []Frame{{FrameRequest, 1, []byte(`{"op":"hello"}`)}, {FrameStdin, 7, nil}, {FrameData, 1 << 31, big}} {
		if err := fw.Write(f.Type, f.ID, f.Payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.Write(FrameData, 1, make([]byte, MaxPayload+1)); err == nil {
		t.Error("oversized payload accepted")
	}
	fr := NewFrameReader(&buf, false)
	for _, want := range []Frame{{FrameRequest, 1, []byte(`{"op":"hello"}`)}, {FrameStdin, 7, []byte{}}, {FrameData, 1 << 31, big}} {
		got, err := fr.Read()
		if err != nil {
			t.Fatal(err)
		}
		if got.Type != want.Type || got.ID != want.ID || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("got %c/%d/%d bytes, want %c/%d/%d bytes", got.Type, got.ID, len(got.Payload), want.Type, want.ID, len(want.Payload))
		}
	}
	if _, err := fr.Read(); err != io.EOF {
		t.Fatalf("want EOF at the end, got %v", err)
	}
}

// TestFrameResync: the agent skips what a dropped half-frame leaves behind.
func TestFrameResync(t *testing.T) {
	var good bytes.Buffer
	fw := NewFrameWriter(&good)
	fw.Write(FrameRequest, 3, []byte(`{"op":"sync"}`))
	cut := append([]byte{}, good.Bytes()[5:]...) // the tail of a frame whose head was dropped
	stream := append(append(cut, []byte("NXjunk")...), good.Bytes()...)

	fr := NewFrameReader(bytes.NewReader(stream), true)
	f, err := fr.Read()
	if err != nil || f.ID != 3 || string(f.Payload) != `{"op":"sync"}` {
		t.Fatalf("resync failed: %+v %v", f, err)
	}
	if fr.Skipped != len(cut)+6 {
		t.Errorf("skipped %d bytes, want %d", fr.Skipped, len(cut)+6)
	}
	strict := NewFrameReader(bytes.NewReader(stream), false)
	if _, err := strict.Read(); !errors.Is(err, ErrFraming) {
		t.Errorf("strict reader: want a framing error, got %v", err)
	}
	short := NewFrameReader(bytes.NewReader(good.Bytes()[:good.Len()-1]), false)
	if _, err := short.Read(); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated frame: got %v", err)
	}
}
