package agentclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

var ops = []string{protocol.OpHello, protocol.OpMount, protocol.OpBindSystem, protocol.OpExec, protocol.OpUpload,
	protocol.OpDownload, protocol.OpRemove, protocol.OpUnmount, protocol.OpSync, protocol.OpPoweroff}

// FuzzAgentResponse decodes arbitrary 'R' payloads for each op. Seeds: the
// responses the agent writes (each op's success, a failure, a killed
// command) and hostile ones. Invariants: a decoded response has what its
// op needs, within range (mode 07777, owner a uid and gid, size and uptime
// not negative, exit status 0..255); every string that reaches the user,
// a RemoteError's included, is bounded and holds no control character
// but newline and tab.
func FuzzAgentResponse(f *testing.F) {
	for i, r := range []protocol.Response{
		{Hello: &protocol.HelloInfo{Version: protocol.Version, Kernel: "6.6.63", Uptime: 0.84, ModuleErrors: []string{"virtio_rng: not found"}}},
		{}, {}, {Exec: &protocol.ExecResult{ExitStatus: 143, Signal: "SIGTERM"}}, {},
		{File: &protocol.FileInfo{Mode: 0o640, Uid: 0, Gid: 1, Size: 1234}},
		{Error: "remove /mnt/x: no such file or directory"}, {}, {}, {},
	} {
		b, err := json.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	f.Add(uint8(5), []byte(`{"file":{"mode":4294967295,"uid":-1,"gid":0,"size":-5}}`))
	f.Add(uint8(0), []byte("{\"hello\":{\"version\":\"\\u001b[2J\",\"kernel\":\"\\u202e\",\"uptime\":-1}}"))
	f.Add(uint8(3), []byte(`{"exec":{"exit_status":-1}}`))
	f.Fuzz(func(t *testing.T, opIndex uint8, payload []byte) {
		op := ops[int(opIndex)%len(ops)]
		resp, err := decodeResponse(op, payload)
		var re *RemoteError
		if errors.As(err, &re) {
			checkText(t, re.Message)
		}
		if err != nil {
			return
		}
		if resp.Error != "" {
			t.Fatalf("a failure decoded as a response: %q", resp.Error)
		}
		switch op {
		case protocol.OpHello:
			h := resp.Hello
			if h == nil || h.Uptime < 0 || len(h.ModuleErrors) > maxModuleErrors+1 {
				t.Fatalf("hello %+v", h)
			}
			for _, s := range append([]string{h.Version, h.Kernel}, h.ModuleErrors...) {
				checkText(t, s)
			}
		case protocol.OpExec:
			if resp.Exec == nil || resp.Exec.ExitStatus < 0 || resp.Exec.ExitStatus > 255 {
				t.Fatalf("exec %+v", resp.Exec)
			}
			checkText(t, resp.Exec.Signal)
		case protocol.OpDownload:
			fi := resp.File
			if fi == nil || fi.Mode > 0o7777 || fi.Uid < 0 || fi.Gid < 0 || fi.Uid >= 1<<32-1 || fi.Gid >= 1<<32-1 || fi.Size < 0 {
				t.Fatalf("file %+v", fi)
			}
		}
	})
}

func checkText(t *testing.T, s string) {
	t.Helper()
	if len(s) > maxText+len("…") || !utf8.ValidString(s) {
		t.Fatalf("%d bytes of text, valid UTF-8 %v", len(s), utf8.ValidString(s))
	}
	for _, r := range s {
		if r != '\n' && r != '\t' && !unicode.IsPrint(r) {
			t.Fatalf("text %q holds %U", s, r)
		}
	}
}

// fakeAgent answers every request on one end of a pipe with the response
// respond gives, after sending data frames.
func fakeAgent(t *testing.T, data []byte, resp string) *Client {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		fr, fw := protocol.NewFrameReader(b, false), protocol.NewFrameWriter(b)
		for {
			f, err := fr.Read()
			if err != nil {
				return
			}
			if f.Type != protocol.FrameRequest {
				continue
			}
			if len(data) > 0 {
				fw.Write(protocol.FrameData, f.ID, data)
			}
			fw.Write(protocol.FrameResponse, f.ID, []byte(resp))
		}
	}()
	c := NewClient(a)
	t.Cleanup(func() { c.Close(); b.Close() })
	return c
}

// TestHostileResponses: the old client took what the agent said as it
// was: a download's mode with file-type bits (handed to Upload again by
// the deterministic-files step), a negative owner, a size other than the
// bytes that came, an exit status no process has, and a kernel name with
// terminal escapes printed to the user. Issue 11, "the host never trusts
// the guest", found writing FuzzAgentResponse.
func TestHostileResponses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for resp, want := range map[string]string{
		`{"file":{"mode":33188,"uid":0,"gid":0,"size":4}}`: "mode 100644 has bits beyond 07777",
		`{"file":{"mode":420,"uid":-1,"gid":0,"size":4}}`:  "owner -1:0 is not a uid and gid",
		`{"file":{"mode":420,"uid":0,"gid":0,"size":3}}`:   "got 4 bytes, the agent says it sent 3",
		`{"file":{"mode":420,"uid":0,"gid":0,"size":-1}}`:  "size -1 is negative",
		`{}`: "no file info",
	} {
		var buf bytes.Buffer
		_, err := fakeAgent(t, []byte("data"), resp).Download(ctx, "", "/etc/passwd", &buf)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("download answered %s: %v, want an error containing %q", resp, err, want)
		}
	}
	if _, err := fakeAgent(t, nil, `{"exec":{"exit_status":1000}}`).Exec(ctx, protocol.ExecRequest{Argv: []string{"true"}}, nil, nil); err == nil || !strings.Contains(err.Error(), "exit status 1000 is not 0..255") {
		t.Errorf("exec: %v", err)
	}
	info, err := fakeAgent(t, nil, "{\"hello\":{\"version\":\"2\",\"kernel\":\"6.6\\u001b]0;owned\\u0007\\u001b[2J\"}}").Hello(ctx)
	if err != nil || info.Kernel != "6.6?]0;owned??[2J" {
		t.Errorf("hello: %+v, %v; want the escapes replaced", info, err)
	}
	err = fakeAgent(t, nil, `{"error":"`+strings.Repeat("x", 10000)+`\u001b[31m"}`).Sync(ctx)
	var re *RemoteError
	if !errors.As(err, &re) || len(re.Message) > maxText+len("…") || strings.Contains(re.Message, "\x1b") {
		t.Errorf("a long error: %d bytes", len(err.Error()))
	}
}
