package nixos

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
)

// A staged symbolic link must not carry a later upload out of the staging
// area onto the host.
func TestStoreCommRefusesWritesThroughLinks(t *testing.T) {
	host := t.TempDir()
	s := &storeComm{dir: t.TempDir()}
	if err := os.Symlink(host, filepath.Join(s.dir, "escape")); err != nil {
		t.Fatal(err)
	}
	err := s.Upload("/escape/passwd", strings.NewReader("x"), nil)
	if err == nil || !strings.Contains(err.Error(), "/escape is a symbolic link in the image; refusing to write through it") {
		t.Fatalf("Upload through a link: %v", err)
	}
	ops := stageops.Encode([]stageops.Op{{Path: "/escape/d", Mkdir: true}})
	if err := s.Upload(stageops.Path, bytes.NewReader(ops), nil); err == nil {
		t.Fatal("mkdir through a link succeeded")
	}
	if ents, _ := os.ReadDir(host); len(ents) != 0 {
		t.Fatalf("the host directory behind the link got %v", ents)
	}
	// A link at the path itself is replaced, not followed.
	if err := s.Upload("/escape", strings.NewReader("file now"), nil); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(s.dir, "escape")); err != nil || string(b) != "file now" {
		t.Fatalf("staged /escape: %q, %v", b, err)
	}
}

// Staging operations: mkdir, chmod (special bits kept) and a recursive chown
// that covers what exists when it runs.
func TestStoreCommStagingOps(t *testing.T) {
	s := &storeComm{dir: t.TempDir()}
	if err := s.Upload("/srv/a/file", strings.NewReader("data"), nil); err != nil {
		t.Fatal(err)
	}
	mode := uint32(0o2750)
	doc := stageops.Encode([]stageops.Op{
		{Path: "/srv/empty", Mkdir: true},
		{Path: "/srv/a", Mode: &mode, Owner: &[2]uint32{1000, 100}},
	})
	if err := s.Upload(stageops.Path, bytes.NewReader(doc), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, filepath.Base(stageops.Path))); err == nil {
		t.Error("the operations document was staged as a file")
	}
	if fi, err := os.Stat(filepath.Join(s.dir, "srv", "empty")); err != nil || !fi.IsDir() {
		t.Errorf("/srv/empty: %v", err)
	}
	fi, err := os.Stat(filepath.Join(s.dir, "srv", "a"))
	if err != nil || fi.Mode()&os.ModeSetgid == 0 || fi.Mode().Perm() != 0o750 {
		t.Errorf("/srv/a: %v %v; want setgid 0750", fi.Mode(), err)
	}
	for name, want := range map[string]bool{"srv/a": true, "srv/a/file": true, "srv": false, "srv/empty": false} {
		uid, gid, ok := s.ownerOf(name)
		if ok != want || (ok && (uid != 1000 || gid != 100)) {
			t.Errorf("ownerOf(%s) = %d, %d, %v; want set: %v", name, uid, gid, ok, want)
		}
	}
	if err := s.Upload(stageops.Path, strings.NewReader(`{"ops":[{"path":"../x"}]}`), nil); err == nil {
		t.Error("a relative operation path was accepted")
	}
}
