package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// recorder is a System that checks what Serve hands it and does nothing.
// It runs on Serve's goroutines, so it reports with Errorf.
type recorder struct{ t *testing.T }

func (r *recorder) Hello() (protocol.HelloInfo, error) { return protocol.HelloInfo{Version: "x"}, nil }
func (r *recorder) Mount(ctx context.Context, m *protocol.MountRequest) error {
	if m == nil {
		r.t.Error("mount without its request")
	}
	return nil
}
func (r *recorder) BindSystem(ctx context.Context, b *protocol.BindSystemRequest) error {
	if b == nil {
		r.t.Error("bind_system without its request")
	}
	return nil
}
func (r *recorder) Exec(ctx context.Context, e *protocol.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (protocol.ExecResult, error) {
	if e == nil || len(e.Argv) == 0 {
		r.t.Error("exec without argv")
	}
	if stdin != nil {
		io.Copy(stdout, stdin) // ends at the empty 'I' frame, a cancel or the disconnect
	}
	return protocol.ExecResult{}, nil
}
func (r *recorder) Upload(ctx context.Context, u *protocol.UploadRequest, data io.Reader) error {
	if u == nil || u.Path == "" || u.Size < 0 || u.Mode > 0o7777 || u.Uid < 0 || u.Gid < 0 {
		r.t.Errorf("upload %+v reached the system", u)
	}
	n, err := io.Copy(io.Discard, data)
	if err == nil && n != u.Size {
		return fmt.Errorf("got %d of %d bytes", n, u.Size)
	}
	if n > u.Size {
		r.t.Errorf("upload read %d bytes, over its size %d", n, u.Size)
	}
	return err
}
func (r *recorder) Download(ctx context.Context, root, path string, w io.Writer) (protocol.FileInfo, error) {
	if path == "" {
		r.t.Error("download without a path")
	}
	_, err := w.Write([]byte("data"))
	return protocol.FileInfo{Mode: 0o644, Size: 4}, err
}
func (r *recorder) Remove(ctx context.Context, root, path string, recursive bool) error {
	if path == "" {
		r.t.Error("remove without a path")
	}
	return nil
}
func (r *recorder) Unmount(ctx context.Context, target string) error {
	if target == "" {
		r.t.Error("unmount without a target")
	}
	return nil
}
func (r *recorder) Sync() error                        { return nil }
func (r *recorder) Poweroff(ctx context.Context) error { return nil }

// wire is the host's end as Serve sees it: the fuzz input to read, and
// what Serve writes kept.
type wire struct {
	r   io.Reader
	mu  sync.Mutex
	out bytes.Buffer
}

func (w *wire) Read(p []byte) (int, error) { return w.r.Read(p) }
func (w *wire) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(p)
}

// FuzzAgentRequest runs Serve over arbitrary bytes with a System that
// checks what reaches it. Seeds: the frames agentclient sends for every op
// (requests as it marshals them, upload data, stdin and its end, a
// cancel), and malformed requests. Invariants: Serve ends when the input
// ends (no request waits forever for data), no request the System gets
// lacks its fields or has a negative size, a mode beyond 07777 or an owner
// that is no uid; every request frame Serve reads is answered by exactly
// one well-formed response with its id (up to an answered poweroff), and
// what Serve writes is well-formed frames.
func FuzzAgentRequest(f *testing.F) {
	for _, seed := range agentSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		rec := &recorder{t: t}
		w := &wire{r: bytes.NewReader(in)}
		done := make(chan error, 1)
		go func() { done <- Serve(w, rec) }()
		var err error
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Serve still running 10 s after its input ended")
		}
		if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrPoweroff) {
			t.Fatalf("Serve: %v", err)
		}
		// The requests Serve read: the frames a resynchronising reader
		// finds, up to the poweroff it answered.
		want := map[uint32]int{}
		fr := protocol.NewFrameReader(bytes.NewReader(in), true)
		for {
			f, err := fr.Read()
			if err != nil {
				break
			}
			if f.Type != protocol.FrameRequest {
				continue
			}
			want[f.ID]++
			if req, err := decodeRequest(f.Payload); err == nil && req.Op == protocol.OpPoweroff {
				break
			}
		}
		got := map[uint32]int{}
		out := protocol.NewFrameReader(bytes.NewReader(w.out.Bytes()), false)
		for {
			f, err := out.Read()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Serve wrote a malformed stream: %v", err)
			}
			if f.Type != protocol.FrameResponse {
				continue
			}
			var resp protocol.Response
			if err := json.Unmarshal(f.Payload, &resp); err != nil {
				t.Fatalf("response %s: %v", f.Payload, err)
			}
			got[f.ID]++
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("responses by id %v, requests by id %v", got, want)
		}
	})
}

// agentSeeds are streams as the host writes them.
func agentSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	stream := func(write func(fw *protocol.FrameWriter) error) {
		var b bytes.Buffer
		if err := write(protocol.NewFrameWriter(&b)); err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b.Bytes())
	}
	q := func(fw *protocol.FrameWriter, id uint32, r protocol.Request) error {
		return fw.WriteJSON(protocol.FrameRequest, id, &r)
	}
	stream(func(fw *protocol.FrameWriter) error {
		for i, r := range []protocol.Request{
			{Op: protocol.OpHello},
			{Op: protocol.OpMount, Mount: &protocol.MountRequest{Source: "/dev/vda2", Target: "/mnt", FSType: "ext4"}},
			{Op: protocol.OpBindSystem, Bind: &protocol.BindSystemRequest{Root: "/mnt", Tmp: true}},
			{Op: protocol.OpExec, Exec: &protocol.ExecRequest{Argv: []string{"true"}, Chroot: "/mnt"}},
			{Op: protocol.OpDownload, Root: "/mnt", Path: "/etc/passwd"},
			{Op: protocol.OpRemove, Root: "/mnt", Path: "/etc/machine-id"},
			{Op: protocol.OpUnmount, Path: "/mnt"},
			{Op: protocol.OpSync},
			{Op: protocol.OpPoweroff},
		} {
			if err := q(fw, uint32(i+1), r); err != nil {
				return err
			}
		}
		return nil
	})
	stream(func(fw *protocol.FrameWriter) error {
		if err := q(fw, 7, protocol.Request{Op: protocol.OpUpload, Upload: &protocol.UploadRequest{Root: "/mnt", Path: "/etc/shadow", Mode: 0o640, Gid: 1, Size: 9}}); err != nil {
			return err
		}
		fw.Write(protocol.FrameData, 7, []byte("root:!:1:"))
		return q(fw, 8, protocol.Request{Op: protocol.OpSync})
	})
	stream(func(fw *protocol.FrameWriter) error {
		if err := q(fw, 9, protocol.Request{Op: protocol.OpExec, Exec: &protocol.ExecRequest{Argv: []string{"cat"}, HasStdin: true}}); err != nil {
			return err
		}
		fw.Write(protocol.FrameStdin, 9, []byte("hello\n"))
		fw.Write(protocol.FrameStdin, 9, nil)
		fw.Write(protocol.FrameCancel, 9, nil)
		return q(fw, 10, protocol.Request{Op: protocol.OpHello})
	})
	for _, bad := range []string{
		`{"op":"upload","upload":{"path":"/x","size":-1}}`,
		`{"op":"upload","upload":{"path":"/x","mode":65535,"size":0}}`,
		`{"op":"upload","upload":{"path":"/x","uid":-1,"size":0}}`,
		`{"op":"upload","upload":{"path":"/x","size":100}}`,  // data never comes
		`{"op":"exec","exec":{"argv":["cat"],"stdin":true}}`, // nor stdin's end
		`{"op":"exec"}`, `{"op":"mount"}`, `{"op":"download"}`, `{"op":"nosuch"}`, `{"op":`, `[]`,
	} {
		stream(func(fw *protocol.FrameWriter) error {
			if err := fw.Write(protocol.FrameRequest, 3, []byte(bad)); err != nil {
				return err
			}
			return q(fw, 4, protocol.Request{Op: protocol.OpSync})
		})
	}
	return seeds
}

// TestDecodeRequestRefuses: an upload's mode beyond 07777 and a negative
// owner reached the System (files.go masked the mode; fchown took -1 as
// "unchanged"), and the checks sat in handle, after the request had
// started. Issue 11, agent request fuzzing.
func TestDecodeRequestRefuses(t *testing.T) {
	for doc, want := range map[string]string{
		`{"op":"upload","upload":{"path":"/x","mode":65535}}`:       "mode 177777 has bits beyond 07777",
		`{"op":"upload","upload":{"path":"/x","uid":-1}}`:           "owner -1:0 is not a uid and gid",
		`{"op":"upload","upload":{"path":"/x","gid":4294967295}}`:   "owner 0:4294967295",
		`{"op":"upload","upload":{"path":"/x","size":-1}}`:          "upload: negative size",
		`{"op":"upload","upload":{"size":1}}`:                       "upload: missing upload.path",
		`{"op":"exec","exec":{"argv":[]}}`:                          "exec: missing exec.argv",
		`{"op":"remove"}`:                                           "remove: missing path",
		`{"op":"format"}`:                                           `unknown op "format"`,
		`{"op":"upload","upload":{"path":"/x","size":1e30}}`:        "bad request",
		`{"op":"upload","upload":{"path":"/x","mode":-1,"size":0}}`: "bad request",
	} {
		if _, err := decodeRequest([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("decodeRequest(%s) = %v, want an error containing %q", doc, err, want)
		}
	}
	if r, err := decodeRequest([]byte(`{"op":"upload","upload":{"path":"/x","mode":4077,"uid":1000,"gid":100,"size":3}}`)); err != nil || r.Upload.Mode != 0o7755 {
		t.Errorf("a good upload: %+v, %v", r, err)
	}
}

// TestServeAbandonedUpload: a request arriving while an upload still waits
// for data (the host abandoned it) used to block Serve for good: it waited
// for the upload to end before reading on. Now the upload is cancelled and
// the new request answered.
func TestServeAbandonedUpload(t *testing.T) {
	var b bytes.Buffer
	fw := protocol.NewFrameWriter(&b)
	fw.WriteJSON(protocol.FrameRequest, 1, protocol.Request{Op: protocol.OpUpload, Upload: &protocol.UploadRequest{Path: "/x", Size: 100}})
	fw.WriteJSON(protocol.FrameRequest, 2, protocol.Request{Op: protocol.OpSync})
	pr, pw := io.Pipe()
	go pw.Write(b.Bytes()) // and the host stays connected
	w := &wire{r: pr}
	done := make(chan error, 1)
	go func() { done <- Serve(w, &recorder{t: t}) }()
	deadline := time.After(10 * time.Second)
	for {
		w.mu.Lock()
		got := bytes.Count(w.out.Bytes(), []byte("NXR\x00"))
		w.mu.Unlock()
		if got == 2 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("%d responses after 10 s; want the upload cancelled and the sync answered", got)
		case <-time.After(10 * time.Millisecond):
		}
	}
	pw.Close()
	if err := <-done; err != io.EOF {
		t.Errorf("Serve: %v", err)
	}
}
