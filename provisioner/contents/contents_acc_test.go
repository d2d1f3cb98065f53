package contents

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

// accTemplate is an install-mode nixos-image build of system with the given
// provisioner blocks.
func accTemplate(system, out, provisioners string) string {
	return packertest.Template("contents", fmt.Sprintf(`  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out), provisioners)
}

func runPacker(t *testing.T, name, tmpl string) packertest.Result {
	t.Helper()
	return packertest.Run(t, name, "nixos-contents", tmpl)
}

// checkImage checks the root filesystem of img (its first partition) with
// e2fsck and reads each file back, and returns it for further checks.
func checkImage(t *testing.T, img string, contents map[string]string) imagecheck.FS {
	t.Helper()
	fs := imagecheck.FS{Image: img, Offset: imagecheck.Partitions(t, img)[0].Start}
	imagecheck.Fsck(t, fs)
	for p, want := range contents {
		if got := imagecheck.Debugfs(t, fs, "cat "+p); got != want {
			t.Errorf("%s holds %q, want %q", p, got, want)
		}
	}
	return fs
}

// want is what a provisioned path should be in the image.
type want struct {
	path     string
	typ      string // as debugfs names it: regular, directory
	mode     uint32
	uid, gid uint32
}

// checkStats reads each path's inode back with debugfs.
func checkStats(t *testing.T, fs imagecheck.FS, wants []want) {
	t.Helper()
	paths := make([]string, len(wants))
	for i, w := range wants {
		paths[i] = w.path
	}
	for i, st := range imagecheck.Stat(t, fs, paths) {
		w := wants[i]
		if st.Type != w.typ || st.Mode&0o7777 != w.mode || st.Uid != w.uid || st.Gid != w.gid {
			t.Errorf("%s: %s mode %04o uid %d gid %d; want %s mode %04o uid %d gid %d",
				w.path, st.Type, st.Mode&0o7777, st.Uid, st.Gid, w.typ, w.mode, w.uid, w.gid)
		}
	}
}

func tail(s string, n int) string { return packertest.Tail(s, n) }

func write(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func TestAccContents(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	dir := t.TempDir()
	write(t, filepath.Join(dir, "motd"), "welcome to the contents test\n", 0o644)
	write(t, filepath.Join(dir, "configuration.nix"), "{ ... }: { }\n", 0o600)
	write(t, filepath.Join(dir, "tree", "top"), "top\n", 0o600)
	write(t, filepath.Join(dir, "tree", "sub", "exe"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(dir, "tree", "sub", "deeper", "leaf"), "leaf\n", 0o644)
	if err := os.Chmod(filepath.Join(dir, "tree", "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "conf", "a.conf"), "a\n", 0o644)
	write(t, filepath.Join(dir, "conf", "b.conf"), "b\n", 0o644)
	write(t, filepath.Join(dir, "conf", "c.txt"), "c\n", 0o644)
	out := filepath.Join(dir, "out")

	prov := fmt.Sprintf(`
  provisioner "nixos-contents" {
    config_file = %q
    content {
      source = %q
      target = "/etc/motd"
      mode   = "0640"
      user   = "alice"
      group  = "users"
    }
    content {
      inline = "hello\n"
      target = "/etc/greeting"
    }
    content {
      source = %q
      target = "/srv/tree"
      user   = "1000"
      group  = "users"
    }
    content {
      source = %q
      target = "/etc/conf.d"
      mode   = "0600"
    }
    content {
      inline = "read by the booted system's init\n"
      target = "/etc/probe"
      mode   = "0640"
      user   = "alice"
      group  = "users"
    }
  }
`, filepath.Join(dir, "configuration.nix"), filepath.Join(dir, "motd"), filepath.Join(dir, "tree"), filepath.Join(dir, "conf", "*.conf"))
	res := runPacker(t, "contents", accTemplate(system, out, prov))
	if res.Exit != 0 {
		t.Fatalf("packer build exited %d:\n%s", res.Exit, tail(res.Log, 6000))
	}
	for _, w := range []string{"Copying " + filepath.Join(dir, "motd") + " to /etc/motd", "Writing /etc/greeting (inline, 6 bytes)"} {
		if !strings.Contains(res.Log, w) {
			t.Errorf("log lacks %q", w)
		}
	}

	img := filepath.Join(out, "nixos.img")
	fs := checkImage(t, img, map[string]string{
		"/etc/motd":                    "welcome to the contents test\n",
		"/etc/greeting":                "hello\n",
		"/etc/nixos/configuration.nix": "{ ... }: { }\n",
		"/srv/tree/top":                "top\n",
		"/srv/tree/sub/exe":            "#!/bin/sh\n",
		"/srv/tree/sub/deeper/leaf":    "leaf\n",
		"/etc/conf.d/a.conf":           "a\n",
		"/etc/conf.d/b.conf":           "b\n",
	})
	checkStats(t, fs, []want{
		{"/etc/motd", "regular", 0o640, 1000, 100},
		{"/etc/greeting", "regular", 0o644, 0, 0},
		{"/etc/nixos/configuration.nix", "regular", 0o644, 0, 0},
		{"/srv/tree", "directory", 0o755, 1000, 100},
		{"/srv/tree/top", "regular", 0o600, 1000, 100},
		{"/srv/tree/sub", "directory", 0o750, 1000, 100},
		{"/srv/tree/sub/exe", "regular", 0o755, 1000, 100},
		{"/srv/tree/sub/deeper/leaf", "regular", 0o644, 1000, 100},
		{"/etc/conf.d/a.conf", "regular", 0o600, 0, 0},
		{"/etc/conf.d/b.conf", "regular", 0o600, 0, 0},
	})
	if got := imagecheck.Debugfs(t, fs, "ls -l /etc/conf.d"); strings.Contains(got, "c.txt") {
		t.Errorf("/etc/conf.d holds c.txt, which the glob does not match:\n%s", got)
	}

	// The same through the real kernel: the installed system boots and its
	// init reports /etc/probe's mode and owner with stat.
	line := packertest.BootImage(t, img, system, "bios")
	t.Logf("booted: %s", line)
	if !strings.Contains(line, " probe=640:1000:100 ") {
		t.Errorf("the booted system reports %q; want probe=640:1000:100 (mode 0640, alice:users)", line)
	}
}

// storeTemplate is a store-only nixos-image build of the closure of roots
// with the given provisioner blocks.
func storeTemplate(roots []string, out, provisioners string) string {
	return packertest.Template("store", fmt.Sprintf(`  only_nix_store   = true
  store_paths      = %s
  output_directory = %q`, packertest.HCLList(roots), out), provisioners)
}

// In store-only mode the contents land relative to the store filesystem's
// root, with their modes and numeric owners, written by the host alone.
func TestAccContentsStoreOnly(t *testing.T) {
	roots := fixtures.Build(t, "small")
	dir := t.TempDir()
	write(t, filepath.Join(dir, "tree", "top"), "top\n", 0o600)
	write(t, filepath.Join(dir, "tree", "sub", "exe"), "#!/bin/sh\n", 0o755)
	if err := os.Chmod(filepath.Join(dir, "tree", "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "conf", "a.conf"), "a\n", 0o644)
	write(t, filepath.Join(dir, "conf", "b.conf"), "b\n", 0o644)
	out := filepath.Join(dir, "out")
	prov := fmt.Sprintf(`
  provisioner "nixos-contents" {
    content {
      inline = "hello\n"
      target = "/etc/greeting"
      mode   = "0640"
      user   = "0"
      group  = "30000"
    }
    content {
      source = %q
      target = "/srv/tree"
      user   = "1000"
      group  = "100"
    }
    content {
      source = %q
      target = "/conf.d"
      mode   = "2750"
    }
  }
`, filepath.Join(dir, "tree"), filepath.Join(dir, "conf", "*.conf"))
	res := runPacker(t, "contents_store_only", storeTemplate(roots, out, prov))
	res.MustSucceed(t)

	img := filepath.Join(out, "nixos.img")
	fs := checkImage(t, img, map[string]string{
		"/etc/greeting":     "hello\n",
		"/srv/tree/top":     "top\n",
		"/srv/tree/sub/exe": "#!/bin/sh\n",
		"/conf.d/a.conf":    "a\n",
		"/conf.d/b.conf":    "b\n",
	})
	checkStats(t, fs, []want{
		{"/etc", "directory", 0o755, 0, 0}, // made for the file: root's
		{"/etc/greeting", "regular", 0o640, 0, 30000},
		{"/srv/tree", "directory", 0o755, 1000, 100},
		{"/srv/tree/top", "regular", 0o600, 1000, 100},
		{"/srv/tree/sub", "directory", 0o750, 1000, 100},
		{"/srv/tree/sub/exe", "regular", 0o755, 1000, 100},
		{"/conf.d/a.conf", "regular", 0o2750, 0, 0},
		{"/conf.d/b.conf", "regular", 0o2750, 0, 0},
	})
	// The store itself stays root's.
	if st := imagecheck.Stat(t, fs, []string{"/" + filepath.Base(roots[0])})[0]; st.Uid != 0 || st.Gid != 0 {
		t.Errorf("%s: uid %d gid %d; want root's", roots[0], st.Uid, st.Gid)
	}
}

// Store-only images have no /etc/passwd and no /etc/nixos: names and
// config_file are refused before anything is written, naming the key.
func TestAccContentsStoreOnlyErrors(t *testing.T) {
	roots := fixtures.Build(t, "small")
	for name, tc := range map[string]struct{ prov, want string }{
		"user_name": {`
  provisioner "nixos-contents" {
    content {
      inline = "x\n"
      target = "/x"
      user   = "alice"
      group  = "100"
    }
  }`, `content[0] (inline): user "alice": a store-only image (only_nix_store = true) has no /etc/passwd or /etc/group to look names up in; give a numeric id`},
		"config_file": {`
  provisioner "nixos-contents" {
    config_file = "%s"
  }`, `config_file: a store-only image (only_nix_store = true) has no /etc/nixos`},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			conf := filepath.Join(dir, "configuration.nix")
			write(t, conf, "{ ... }: { }\n", 0o644)
			prov := tc.prov
			if strings.Contains(prov, "%s") {
				prov = fmt.Sprintf(prov, conf)
			}
			out := filepath.Join(dir, "out")
			res := runPacker(t, "contents_store_only_"+name, storeTemplate(roots, out, prov))
			if res.Exit == 0 {
				t.Fatalf("packer build succeeded; want %q", tc.want)
			}
			if !strings.Contains(res.Log, tc.want) {
				t.Errorf("the log lacks %q:\n%s", tc.want, tail(res.Log, 4000))
			}
			if _, err := os.Stat(filepath.Join(out, "nixos.img")); err == nil {
				t.Errorf("a failed build left %s", filepath.Join(out, "nixos.img"))
			}
		})
	}
}

// An unknown user fails the build with an error naming it and the file it
// was looked up in.
func TestAccContentsUnknownUser(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	prov := `
  provisioner "nixos-contents" {
    content {
      inline = "x\n"
      target = "/etc/x"
      user   = "mallory"
      group  = "users"
    }
  }
`
	res := runPacker(t, "contents_unknown_user", accTemplate(system, out, prov))
	if res.Exit == 0 {
		t.Fatalf("packer build succeeded; want a failure naming user mallory:\n%s", tail(res.Log, 4000))
	}
	if want := `user: "mallory" is not in the image's /etc/passwd`; !strings.Contains(res.Log, want) {
		t.Errorf("the log lacks %q:\n%s", want, tail(res.Log, 4000))
	}
}

// A target whose directory is a symbolic link into the Nix store is refused
// before anything is written.
func TestAccContentsStoreSymlink(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	prov := fmt.Sprintf(`
  provisioner "shell" {
    inline_shebang = "/run/current-system/sw/bin/sh -e"
    inline         = ["ln -s %s /etc/into-store"]
  }
  provisioner "nixos-contents" {
    content {
      inline = "x\n"
      target = "/etc/into-store/x"
    }
  }
`, system)
	res := runPacker(t, "contents_store_symlink", accTemplate(system, out, prov))
	if res.Exit == 0 {
		t.Fatalf("packer build succeeded; want a refusal of /etc/into-store:\n%s", tail(res.Log, 4000))
	}
	if want := "/etc/into-store resolves to " + system + " in the image, inside the read-only Nix store"; !strings.Contains(res.Log, want) {
		t.Errorf("the log lacks %q:\n%s", want, tail(res.Log, 4000))
	}
}
