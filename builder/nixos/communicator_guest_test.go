package nixos

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agent"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentclient"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// tarGuest answers every command with a tar stream of its choosing, as a
// hostile installed system can.
type tarGuest struct {
	*fakeGuest
	tar []byte
}

func (g *tarGuest) Exec(_ context.Context, _ *protocol.ExecRequest, _ io.Reader, stdout, _ io.Writer) (protocol.ExecResult, error) {
	_, err := stdout.Write(g.tar)
	return protocol.ExecResult{}, err
}

func tarGuestComm(t *testing.T, data []byte) *guestComm {
	t.Helper()
	a, b := net.Pipe()
	go agent.Serve(b, &tarGuest{fakeGuest: newFakeGuest(), tar: data})
	c := agentclient.NewClient(a)
	t.Cleanup(func() { c.Close() })
	return &guestComm{ctx: context.Background(), client: c}
}

type tarEntry struct {
	name, link, body string
	typ              byte
}

func tarBytes(t *testing.T, es ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			io.WriteString(tw, e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// padded pads a tar stream as GNU tar pads its last record.
func padded(b []byte) []byte { return append(b, make([]byte, 8192)...) }

// TestDownloadDirSymlinkEscape: a guest's tar with esc -> <host dir> and
// then esc/file must write nothing outside the destination.
func TestDownloadDirSymlinkEscape(t *testing.T) {
	base := t.TempDir()
	dst, outside := filepath.Join(base, "dst"), filepath.Join(base, "outside")
	for _, d := range []string{dst, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	g := tarGuestComm(t, tarBytes(t,
		tarEntry{name: "./", typ: tar.TypeDir},
		tarEntry{name: "./esc", typ: tar.TypeSymlink, link: outside},
		tarEntry{name: "./esc/file", typ: tar.TypeReg, body: "pwned"},
	))
	err := g.DownloadDir("/etc", dst, nil)
	if err == nil || !strings.Contains(err.Error(), "esc/file") {
		t.Errorf("DownloadDir = %v; want an error naming esc/file", err)
	}
	if des, _ := os.ReadDir(outside); len(des) != 0 {
		t.Errorf("%d entries were written outside the destination", len(des))
	}
}

// TestDownloadDirRefusesNames: absolute and ../ names are errors naming the
// entry, not silently written or skipped.
func TestDownloadDirRefusesNames(t *testing.T) {
	for _, name := range []string{"/abs", "../up", "./../up"} {
		base := t.TempDir()
		dst := filepath.Join(base, "dst")
		if err := os.Mkdir(dst, 0o755); err != nil {
			t.Fatal(err)
		}
		g := tarGuestComm(t, tarBytes(t, tarEntry{name: name, typ: tar.TypeReg, body: "x"}))
		err := g.DownloadDir("/etc", dst, nil)
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: DownloadDir = %v; want an error naming it", name, err)
		}
		if _, err := os.Lstat(filepath.Join(base, "up")); err == nil {
			t.Errorf("%s: written beside the destination", name)
		}
		if des, _ := os.ReadDir(dst); len(des) != 0 {
			t.Errorf("%s: written into the destination", name)
		}
	}
}

// TestDownloadDirHardLinkOutside: a hard link to a host file is refused.
func TestDownloadDirHardLinkOutside(t *testing.T) {
	base := t.TempDir()
	secret := filepath.Join(base, "secret")
	if err := os.WriteFile(secret, []byte("host"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := tarGuestComm(t, tarBytes(t, tarEntry{name: "./h", typ: tar.TypeLink, link: secret}))
	err := g.DownloadDir("/etc", filepath.Join(base, "dst"), nil)
	if err == nil || !strings.Contains(err.Error(), "hard link") {
		t.Errorf("DownloadDir = %v; want the hard link refused", err)
	}
}

// TestDownloadDirTree: an ordinary tree, with exclusions, from a stream
// padded as GNU tar pads it (read to its end, so the guest's tar finishes).
func TestDownloadDirTree(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "dst")
	g := tarGuestComm(t, padded(tarBytes(t,
		tarEntry{name: "./", typ: tar.TypeDir},
		tarEntry{name: "./d/", typ: tar.TypeDir},
		tarEntry{name: "./d/f", typ: tar.TypeReg, body: "hello"},
		tarEntry{name: "./d/skip.log", typ: tar.TypeReg, body: "no"},
		tarEntry{name: "./d/l", typ: tar.TypeSymlink, link: "f"},
	)))
	if err := g.DownloadDir("/etc", dst, []string{"d/*.log"}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "d/f")); err != nil || string(b) != "hello" {
		t.Errorf("d/f = %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(dst, "d/skip.log")); err == nil {
		t.Error("excluded d/skip.log was extracted")
	}
	if l, err := os.Readlink(filepath.Join(dst, "d/l")); err != nil || l != "f" {
		t.Errorf("d/l = %q, %v", l, err)
	}
}
