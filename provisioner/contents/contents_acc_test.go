package contents

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/acc"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/imagecheck"
)

// accTemplate is an install-mode nixos-image build of system with the given
// provisioner blocks.
func accTemplate(system, out, provisioners string) string {
	return fmt.Sprintf(`packer {
  required_plugins {
    nixos = {
      source  = "github.com/packer-plugin-nixos/nixos"
      version = ">= 0.1.0"
    }
  }
}

source "nixos-image" "contents" {
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q
}

build {
  sources = ["source.nixos-image.contents"]
%s
}
`, system, out, provisioners)
}

func runPacker(t *testing.T, name, tmpl string) acc.Result {
	t.Helper()
	return acc.Run(t, name, "nixos-contents", tmpl)
}

func tail(s string, n int) string { return acc.Tail(s, n) }

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
	fs := imagecheck.FS{Image: img, Offset: imagecheck.Partitions(t, img)[0].Start}
	imagecheck.Fsck(t, fs)
	for p, want := range map[string]string{
		"/etc/motd":                    "welcome to the contents test\n",
		"/etc/greeting":                "hello\n",
		"/etc/nixos/configuration.nix": "{ ... }: { }\n",
		"/srv/tree/top":                "top\n",
		"/srv/tree/sub/exe":            "#!/bin/sh\n",
		"/srv/tree/sub/deeper/leaf":    "leaf\n",
		"/etc/conf.d/a.conf":           "a\n",
		"/etc/conf.d/b.conf":           "b\n",
	} {
		if got := imagecheck.Debugfs(t, fs, "cat "+p); got != want {
			t.Errorf("%s holds %q, want %q", p, got, want)
		}
	}
	type want struct {
		path     string
		typ      string
		mode     uint32
		uid, gid uint32
	}
	wants := []want{
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
	}
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
	if got := imagecheck.Debugfs(t, fs, "ls -l /etc/conf.d"); strings.Contains(got, "c.txt") {
		t.Errorf("/etc/conf.d holds c.txt, which the glob does not match:\n%s", got)
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
