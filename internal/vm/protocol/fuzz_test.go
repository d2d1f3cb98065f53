package protocol

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
)

// realFrames is what FrameWriter puts on the wire for each op's exchange:
// the requests as agentclient marshals them, streamed data, stdin's end,
// a cancel, and the responses the agent writes.
func realFrames(tb testing.TB) []byte {
	var buf bytes.Buffer
	fw := NewFrameWriter(&buf)
	must := func(err error) {
		if err != nil {
			tb.Fatal(err)
		}
	}
	for i, req := range []Request{
		{Op: OpHello},
		{Op: OpMount, Mount: &MountRequest{Source: "/dev/vda2", Target: "/mnt", FSType: "ext4", Options: "nosuid,nodev"}},
		{Op: OpBindSystem, Bind: &BindSystemRequest{Root: "/mnt", Tmp: true, EFIVars: true, BlockLinks: true}},
		{Op: OpExec, Exec: &ExecRequest{Argv: []string{"/bin/sh", "-c", "echo hi"}, Env: []string{"PATH=/bin"}, Chroot: "/mnt", HasStdin: true}},
		{Op: OpUpload, Upload: &UploadRequest{Path: "/mnt/etc/shadow", Mode: 0o640, Uid: 0, Gid: 1, Size: 5}},
		{Op: OpDownload, Path: "/mnt/etc/passwd"},
		{Op: OpRemove, Path: "/mnt/var/lib/x", Recursive: true},
		{Op: OpUnmount, Path: "/mnt"},
		{Op: OpSync},
		{Op: OpPoweroff},
	} {
		must(fw.WriteJSON(FrameRequest, uint32(i+1), &req))
	}
	must(fw.Write(FrameStdin, 4, []byte("input\n")))
	must(fw.Write(FrameStdin, 4, nil))
	must(fw.Write(FrameStdout, 4, []byte("hi\n")))
	must(fw.Write(FrameStderr, 4, []byte("warning\n")))
	must(fw.Write(FrameData, 5, []byte("root:")))
	must(fw.Write(FrameCancel, 4, nil))
	must(fw.WriteJSON(FrameResponse, 1, Response{Hello: &HelloInfo{Version: Version, Kernel: "6.6.1", Uptime: 1.5, ModuleErrors: []string{"loop: not found"}}}))
	must(fw.WriteJSON(FrameResponse, 4, Response{Exec: &ExecResult{ExitStatus: 130, Signal: "SIGINT"}}))
	must(fw.WriteJSON(FrameResponse, 6, Response{File: &FileInfo{Mode: 0o644, Size: 3}}))
	must(fw.WriteJSON(FrameResponse, 7, Response{Error: "remove: no such file"}))
	return buf.Bytes()
}

// FuzzFrameReader reads frames from arbitrary bytes, strict and
// resynchronising. Seeds: real frames of every op (realFrames), the same
// cut in the middle, and the same behind garbage. Invariants: reading a
// finite input ends (EOF or an error) within one step per input byte; no
// payload is over MaxPayload nor over what the input held (so the
// allocation per frame is bounded by both); strict reading fails with
// ErrFraming or a truncation error, never skips; every frame read, written
// again with FrameWriter, is exactly the bytes it was read from (strict)
// and reads back as the same frame.
func FuzzFrameReader(f *testing.F) {
	real := realFrames(f)
	f.Add(real)
	f.Add(real[:len(real)/2])
	f.Add(append([]byte("NXQ\x00garbage NX"), real...))
	f.Add([]byte("NXD\x00\x00\x00\x00\x01\x00\x10\x00\x00")) // claims MaxPayload, holds nothing
	// allocSlack is what a Read may allocate besides the payload: errors
	// and their formatting.
	const allocSlack = 16 << 10
	var ms runtime.MemStats
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, resync := range []bool{false, true} {
			fr := NewFrameReader(bytes.NewReader(in), resync)
			consumed := 0
			for steps := 0; ; steps++ {
				if steps > len(in)+1 {
					t.Fatalf("resync=%v: %d frames from %d bytes: no end", resync, steps, len(in))
				}
				skippedBefore := fr.Skipped
				runtime.ReadMemStats(&ms)
				before := ms.TotalAlloc
				fr0, err := fr.Read()
				runtime.ReadMemStats(&ms)
				if a := ms.TotalAlloc - before; a > MaxPayload+allocSlack {
					t.Fatalf("one Read allocated %d bytes, over MaxPayload", a)
				}
				if err != nil {
					if !resync && fr.Skipped != 0 {
						t.Fatalf("strict reader skipped %d bytes", fr.Skipped)
					}
					if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrFraming) {
						t.Fatalf("resync=%v: unexpected error %v", resync, err)
					}
					if err == io.EOF && consumed+fr.Skipped != len(in) {
						t.Fatalf("resync=%v: EOF after %d+%d of %d bytes", resync, consumed, fr.Skipped, len(in))
					}
					break
				}
				start := consumed + fr.Skipped
				consumed += HeaderLen + len(fr0.Payload)
				if len(fr0.Payload) > MaxPayload || consumed+fr.Skipped > len(in) {
					t.Fatalf("a %d-byte payload from %d bytes of input", len(fr0.Payload), len(in))
				}
				var out bytes.Buffer
				if err := NewFrameWriter(&out).Write(fr0.Type, fr0.ID, fr0.Payload); err != nil {
					t.Fatalf("writing back %c/%d: %v", fr0.Type, fr0.ID, err)
				}
				if !bytes.Equal(out.Bytes(), in[start:start+out.Len()]) {
					t.Fatalf("resync=%v (skipped %d→%d): frame %c/%d written back differs from its input", resync, skippedBefore, fr.Skipped, fr0.Type, fr0.ID)
				}
				back, err := NewFrameReader(&out, false).Read()
				if err != nil || back.Type != fr0.Type || back.ID != fr0.ID || !bytes.Equal(back.Payload, fr0.Payload) {
					t.Fatalf("frame %c/%d read back as %c/%d, %v", fr0.Type, fr0.ID, back.Type, back.ID, err)
				}
			}
		}
	})
}
