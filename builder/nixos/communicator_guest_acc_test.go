package nixos

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// Issue 11 finding 8: files reach the installed system through its own
// absolute symlinks, as a command run there sees them. The build makes
// /srv -> /var/lib/srv (as an activation might), then nixos-contents copies
// a directory to /srv/tree, the file provisioner uploads into it and
// downloads from it, and a shell checks where the files are. The old agent
// resolved /mnt/srv/tree in the installer's namespace, where /var/lib/srv
// does not exist: nixos-contents failed with "guest agent: upload: mkdir
// /mnt/srv: file exists".
func TestAccInstallUploadThroughSymlink(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(tree, "top"), "top\n")
	write(filepath.Join(tree, "sub", "leaf"), "leaf\n")
	one := filepath.Join(dir, "one")
	write(one, "uploaded through /srv\n")
	back := filepath.Join(dir, "back", "one")
	out := filepath.Join(dir, "out")
	tmpl := strings.Replace(template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out)), `  sources = ["source.nixos-image.inst"]
`, fmt.Sprintf(`  sources = ["source.nixos-image.inst"]

  provisioner "shell" {
    # The test system has no /bin/sh (real NixOS activation makes one).
    inline_shebang = "/run/current-system/sw/bin/sh -e"
    inline         = ["mkdir -p /var/lib/srv && ln -s /var/lib/srv /srv"]
  }

  provisioner "nixos-contents" {
    content {
      source = %q
      target = "/srv/tree"
    }
  }

  provisioner "file" {
    source      = %q
    destination = "/srv/tree/one"
  }

  provisioner "file" {
    direction   = "download"
    source      = "/srv/tree/one"
    destination = %q
  }

  provisioner "shell" {
    inline_shebang = "/run/current-system/sw/bin/sh -e"
    inline = [
      "test -L /srv",
      "test -f /var/lib/srv/tree/top && test -f /var/lib/srv/tree/sub/leaf && test -f /var/lib/srv/tree/one",
      "echo files-under-var-lib-srv",
    ]
  }
`, tree, one, back), 1)
	res := runPacker(t, "install_symlinked_dirs", tmpl)
	res.MustSucceed(t)
	if !strings.Contains(res.Log, "files-under-var-lib-srv") {
		t.Errorf("the checking shell provisioner's output is not in the log:\n%s", tail(res.Log, 4000))
	}
	if b, err := os.ReadFile(back); err != nil || string(b) != "uploaded through /srv\n" {
		t.Errorf("downloaded /srv/tree/one: %q %v", b, err)
	}
	img := filepath.Join(out, "nixos.img")
	fs := imagecheck.FS{Image: img, Offset: imagecheck.Partitions(t, img)[0].Start}
	imagecheck.Fsck(t, fs)
	for p, want := range map[string]string{"/var/lib/srv/tree/top": "top\n", "/var/lib/srv/tree/sub/leaf": "leaf\n", "/var/lib/srv/tree/one": "uploaded through /srv\n"} {
		if got := imagecheck.Debugfs(t, fs, "cat "+p); got != want {
			t.Errorf("%s holds %q, want %q", p, got, want)
		}
	}
	if st := imagecheck.Stat(t, fs, []string{"/srv"}); len(st) != 1 || st[0].Type != "symlink" {
		t.Errorf("/srv in the image: %+v, want a symlink", st)
	}
}
