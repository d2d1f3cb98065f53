package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentclient"
)

// The tests below are issue 11 finding 8: upload, download and remove
// resolve paths inside the installed root, absolute symlinks included, as
// a command chrooted there would. The old agent took root+path and
// resolved it in its own namespace, so a link such as srv -> /var/lib/srv
// led out of the root: each test plants an in-root target and a decoy of
// the same path outside the root, and the old agent used the decoy (or
// failed with "mkdir <root>/srv: file exists" when it was missing). Root
// privilege is needed only to mount the root's /proc and a filesystem
// inside the root; the files are the test user's.

// symlinkTree is a temporary installed system and, beside it, the outside
// it must never touch: out is an absolute path of the host, and root holds
// the same path as a directory of its own (what a link to out means inside
// the root).
type symlinkTree struct {
	root, out, inOut string
}

func newSymlinkTree(t *testing.T) symlinkTree {
	t.Helper()
	base := t.TempDir()
	tr := symlinkTree{root: filepath.Join(base, "root"), out: filepath.Join(base, "outside")}
	tr.inOut = filepath.Join(tr.root, tr.out)
	dotdots := strings.Repeat("../", strings.Count(tr.root, "/")+3)
	for _, d := range []string{tr.out, tr.inOut, "var/lib/srv", "nix/store/x-etc/etc", "etc", "run"} {
		if !filepath.IsAbs(d) {
			d = filepath.Join(tr.root, d)
		}
		mustMkdir(t, d)
	}
	for link, target := range map[string]string{
		"srv":        "/var/lib/srv",              // an activation's link
		"etc/static": "/nix/store/x-etc/etc",      // NixOS's /etc/static
		"abs":        tr.out,                      // absolute: the host's outside
		"dots":       dotdots + tr.out[1:],        // relative, ".." past the root
		"up":         "/",                         // the root itself
		"proc1":      "/proc/self/root" + tr.out,  // a magic link, in the guest's /proc
		"dangling":   "/var/lib/nosuch",           // mkdir -p stops there
		"run/sys":    "/nix/store/x-etc/etc/sys1", // a link to a file
	} {
		if err := os.Symlink(target, filepath.Join(tr.root, link)); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(tr.root, "nix/store/x-etc/etc/sys1"), "inside")
	// The installed root has the guest's /proc bound (BindSystem), whose
	// magic links lead out of any root.
	if os.Geteuid() == 0 {
		mountIn(t, filepath.Join(tr.root, "proc"), "proc")
	}
	return tr
}

// mountIn mounts a fresh fstype on dir for the test's duration.
func mountIn(t *testing.T, dir, fstype string) {
	t.Helper()
	mustMkdir(t, dir)
	if err := unix.Mount(fstype, dir, fstype, 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

func mustMkdir(t *testing.T, d string) {
	t.Helper()
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	mustMkdir(t, filepath.Dir(p))
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

// assertEmpty fails unless the outside directory is still empty.
func (tr symlinkTree) assertOutsideEmpty(t *testing.T) {
	t.Helper()
	if ents, err := os.ReadDir(tr.out); err != nil || len(ents) != 0 {
		t.Errorf("outside the root: %v %v", ents, err)
	}
}

func upload(ctx context.Context, c *agentclient.Client, root, p, data string) error {
	return c.Upload(ctx, root, p, 0o640, os.Getuid(), os.Getgid(), strings.NewReader(data), int64(len(data)))
}

func TestUploadInRoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, _ := pair(t)
	tr := newSymlinkTree(t)

	// The report's case: /srv -> /var/lib/srv, a missing tree below it.
	if err := upload(ctx, c, tr.root, "/srv/tree/sub/f", "srv"); err != nil {
		t.Fatalf("upload through /srv: %v", err)
	}
	if got := readFile(filepath.Join(tr.root, "var/lib/srv/tree/sub/f")); got != "srv" {
		t.Errorf("var/lib/srv/tree/sub/f = %q", got)
	}
	if fi, err := os.Lstat(filepath.Join(tr.root, "srv")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("srv is no longer a link: %v %v", fi, err)
	}
	if err := upload(ctx, c, tr.root, "etc/static/f", "etc"); err != nil {
		t.Fatal(err)
	}
	if got := readFile(filepath.Join(tr.root, "nix/store/x-etc/etc/f")); got != "etc" {
		t.Errorf("/etc/static/f landed elsewhere: %q", got)
	}
	// Links out of the root are clamped to it: the write lands at the
	// in-root copy of the path, never outside.
	for _, via := range []string{"abs", "dots", "/../../abs", "up/up/abs"} {
		if err := upload(ctx, c, tr.root, via+"/f", via); err != nil {
			t.Errorf("upload via %s: %v", via, err)
			continue
		}
		if got := readFile(filepath.Join(tr.inOut, "f")); got != via {
			t.Errorf("upload via %s: in-root copy holds %q", via, got)
		}
	}
	// A magic link is refused (or, with no /proc mounted in the root,
	// missing), not followed into the agent's root.
	if err := upload(ctx, c, tr.root, "proc1/f", "x"); err == nil {
		t.Error("upload through /proc/1/root accepted")
	}
	// mkdir -p in the chroot fails on a dangling link; so does upload.
	if err := upload(ctx, c, tr.root, "dangling/f", "x"); err == nil {
		t.Error("upload below a dangling link accepted")
	}
	tr.assertOutsideEmpty(t)
	if _, err := os.Lstat(filepath.Join(tr.root, "var/lib/nosuch")); err == nil {
		t.Error("the dangling link's target was created")
	}
	// The last component is replaced, not followed, as before.
	if err := upload(ctx, c, tr.root, "run/sys", "file now"); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(tr.root, "run/sys")); err != nil || !fi.Mode().IsRegular() || readFile(filepath.Join(tr.root, "nix/store/x-etc/etc/sys1")) != "inside" {
		t.Errorf("upload over a link: %v %v", fi, err)
	}
	// No temporary file is left in any directory written to.
	for _, d := range []string{"var/lib/srv/tree/sub", "nix/store/x-etc/etc", tr.inOut[len(tr.root):], "run"} {
		ents, _ := os.ReadDir(filepath.Join(tr.root, d))
		for _, e := range ents {
			if strings.Contains(e.Name(), ".upload-") {
				t.Errorf("leftover %s/%s", d, e.Name())
			}
		}
	}
	if err := upload(ctx, c, "relative/root", "/f", "x"); err == nil {
		t.Error("relative root accepted")
	}
}

func TestDownloadInRoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, _ := pair(t)
	tr := newSymlinkTree(t)
	writeFile(t, filepath.Join(tr.out, "secret"), "outside")
	writeFile(t, filepath.Join(tr.inOut, "secret"), "inside")
	for _, p := range []string{"abs/secret", "dots/secret", "/../abs/secret", "run/sys"} {
		var buf bytes.Buffer
		if _, err := c.Download(ctx, tr.root, p, &buf); err != nil || buf.String() != "inside" {
			t.Errorf("download %s: %q %v", p, buf.String(), err)
		}
	}
	var buf bytes.Buffer
	if _, err := c.Download(ctx, tr.root, "proc1/secret", &buf); err == nil || buf.Len() != 0 {
		t.Errorf("download through /proc/1/root: %q %v", buf.String(), err)
	}
	// A FIFO is refused at once instead of waiting for a writer.
	if err := unix.Mkfifo(filepath.Join(tr.root, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Download(ctx, tr.root, "/fifo", io.Discard); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("download of a FIFO: %v", err)
	}
	var re *agentclient.RemoteError
	if _, err := c.Download(ctx, tr.root, "/nosuch", io.Discard); !errors.As(err, &re) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestRemoveInRoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, _ := pair(t)
	tr := newSymlinkTree(t)
	for _, d := range []string{tr.out, tr.inOut} {
		writeFile(t, filepath.Join(d, "victim"), "x")
		writeFile(t, filepath.Join(d, "tree/a"), "x")
		writeFile(t, filepath.Join(d, "tree/sub/b"), "x")
	}
	// Links inside the tree, to the outside and to the root, stay links.
	if err := os.Symlink(tr.out, filepath.Join(tr.inOut, "tree/sub/abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../../../../..", filepath.Join(tr.inOut, "tree/up")); err != nil {
		t.Fatal(err)
	}
	outside := func() {
		t.Helper()
		for _, f := range []string{"victim", "tree/a", "tree/sub/b"} {
			if _, err := os.Stat(filepath.Join(tr.out, f)); err != nil {
				t.Errorf("outside %s: %v", f, err)
			}
		}
	}

	if err := c.Remove(ctx, tr.root, "abs/victim", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(tr.inOut, "victim")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("in-root victim: %v", err)
	}
	if err := c.Remove(ctx, tr.root, "dots/tree", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(tr.inOut, "tree")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("in-root tree: %v", err)
	}
	outside()
	// A link is removed, not its target, recursive or not.
	if err := c.Remove(ctx, tr.root, "run/sys", false); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, tr.root, "abs", true); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, tr.root, "up", true); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"run/sys", "abs", "up"} {
		if _, err := os.Lstat(filepath.Join(tr.root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("link %s: %v", p, err)
		}
	}
	if readFile(filepath.Join(tr.root, "nix/store/x-etc/etc/sys1")) != "inside" {
		t.Error("a link's target was removed")
	}
	outside()
	// The root itself is refused, however it is named.
	for _, p := range []string{"/", "/..", "srv/.."} {
		if err := c.Remove(ctx, tr.root, p, true); err == nil || !strings.Contains(err.Error(), "refusing") {
			t.Errorf("remove %q: %v", p, err)
		}
	}
	// As rm: a missing file is an error, unless recursive (rm -rf).
	if err := c.Remove(ctx, tr.root, "/nosuch", false); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
	if err := c.Remove(ctx, tr.root, "/nosuch/deeper", true); err != nil {
		t.Errorf("missing tree: %v", err)
	}
	// An empty directory goes without recursive, a full one does not.
	if err := c.Remove(ctx, tr.root, "/var/lib", false); err == nil {
		t.Error("removed a non-empty directory without recursive")
	}
	if err := c.Remove(ctx, tr.root, "/var/lib/srv", false); err != nil {
		t.Errorf("empty directory: %v", err)
	}
	if _, err := os.Stat(tr.root); err != nil {
		t.Errorf("root: %v", err)
	}
	// rm -r --one-file-system: another filesystem inside is left alone.
	if os.Geteuid() == 0 {
		mountIn(t, filepath.Join(tr.root, "m/t"), "tmpfs")
		writeFile(t, filepath.Join(tr.root, "m/t/f"), "x")
		if err := c.Remove(ctx, tr.root, "/m", true); err == nil || !strings.Contains(err.Error(), "another filesystem") {
			t.Errorf("remove across a mount: %v", err)
		}
		if _, err := os.Stat(filepath.Join(tr.root, "m/t/f")); err != nil {
			t.Errorf("the mounted filesystem's file: %v", err)
		}
	}
}
