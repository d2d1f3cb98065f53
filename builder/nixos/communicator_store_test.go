package nixos

import (
	"bytes"
	"io/fs"
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

// snapshotTree records every entry under dir: its type and permissions, a
// link's target and a file's bytes.
func snapshotTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			v += " -> " + link
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += " " + string(b)
		}
		out[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Reading back never changes the staging area (finding 9 of issue 11: a
// Download of a staged link used to delete it), and never follows a staged
// link out of it onto the host; writes still replace a link at the path.
func TestStoreCommReadsLeaveLinksAlone(t *testing.T) {
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "secret"), []byte("host bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &storeComm{dir: t.TempDir()}
	if err := s.Upload("/etc/real", strings.NewReader("staged"), nil); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"link":     filepath.Join(host, "secret"),
		"linkdir":  host,
		"etc/rel":  "real", // even one that stays inside is not followed
		"dangling": filepath.Join(host, "missing"),
	} {
		if err := os.Symlink(target, filepath.Join(s.dir, filepath.FromSlash(name))); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshotTree(t, s.dir)

	for _, src := range []string{"/link", "/linkdir/secret", "/etc/rel", "/dangling"} {
		var buf bytes.Buffer
		err := s.Download(src, &buf)
		if err == nil || !strings.Contains(err.Error(), "is a symbolic link in the image; refusing to read through it") {
			t.Errorf("Download(%s): %v", src, err)
		}
		if buf.Len() != 0 {
			t.Errorf("Download(%s) read %q", src, buf.String())
		}
	}
	for _, src := range []string{"/linkdir", "/linkdir/", "/link"} {
		dst := filepath.Join(t.TempDir(), "out")
		err := s.DownloadDir(src, dst, nil)
		if err == nil || !strings.Contains(err.Error(), "refusing to read through it") {
			t.Errorf("DownloadDir(%s): %v", src, err)
		}
		if _, err := os.Lstat(dst); err == nil {
			t.Errorf("DownloadDir(%s) wrote %s", src, dst)
		}
	}
	// A directory holding a link is copied with the link as a link.
	out := filepath.Join(t.TempDir(), "etc")
	if err := s.DownloadDir("/etc", out, nil); err != nil {
		t.Fatal(err)
	}
	if link, err := os.Readlink(filepath.Join(out, "rel")); err != nil || link != "real" {
		t.Errorf("DownloadDir(/etc) rel: %q, %v", link, err)
	}
	var buf bytes.Buffer
	if err := s.Download("/etc/real", &buf); err != nil || buf.String() != "staged" {
		t.Errorf("Download(/etc/real): %q, %v", buf.String(), err)
	}

	after := snapshotTree(t, s.dir)
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s: %q before the reads, %q after", p, v, after[p])
		}
	}
	for p, v := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared during the reads: %q", p, v)
		}
	}
	if b, err := os.ReadFile(filepath.Join(host, "secret")); err != nil || string(b) != "host bytes" {
		t.Errorf("host file: %q, %v", b, err)
	}

	// Writes still replace a link at the path itself, as before.
	if err := s.Upload("/link", strings.NewReader("file now"), nil); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(s.dir, "link"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("staged /link after the upload: %v, %v", fi, err)
	}
	buf.Reset()
	if err := s.Download("/link", &buf); err != nil || buf.String() != "file now" {
		t.Errorf("Download(/link) after the upload: %q, %v", buf.String(), err)
	}
	if b, err := os.ReadFile(filepath.Join(host, "secret")); err != nil || string(b) != "host bytes" {
		t.Errorf("host file after the upload: %q, %v", b, err)
	}
}
