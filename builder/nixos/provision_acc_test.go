package nixos

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

// Packer's own file and shell provisioners work in install mode, with no
// SSH: they reach the installed system through the installer VM's agent.
// The shell's output shows in the Packer log, its effect and the uploaded
// file (with its mode) are in the image.
func TestAccInstallStockProvisioners(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	dir := t.TempDir()
	local := filepath.Join(dir, "motd")
	if err := os.WriteFile(local, []byte("uploaded by the file provisioner\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(local, 0o640); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "site")
	if err := os.MkdirAll(filepath.Join(tree, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "www", "index.html"), []byte("<p>hi</p>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	tmpl := strings.Replace(template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out)), `  sources = ["source.nixos-image.inst"]
`, fmt.Sprintf(`  sources = ["source.nixos-image.inst"]

  provisioner "file" {
    source      = %q
    destination = "/etc/motd"
  }

  provisioner "file" {
    source      = %q
    destination = "/srv"
  }

  provisioner "shell" {
    # The test system has no /bin/sh (real NixOS activation makes one).
    inline_shebang = "/run/current-system/sw/bin/sh -e"
    inline = [
      "echo shell-saw-$(cat /etc/test-marker)-and-$(cat /etc/motd | tr ' ' '_')",
      "echo written-by-shell > /etc/shell-marker",
    ]
  }
`, local, tree), 1)
	res := runPacker(t, "install_provisioners", tmpl)
	res.MustSucceed(t)
	if !strings.Contains(res.Log, "shell-saw-fixture-marker-v1-and-uploaded_by_the_file_provisioner") {
		t.Errorf("the shell provisioner's output is not in the log:\n%s", tail(res.Log, 4000))
	}
	img := filepath.Join(out, "nixos.img")
	fs := imagecheck.FS{Image: img, Offset: imagecheck.Partitions(t, img)[0].Start}
	imagecheck.Fsck(t, fs)
	if got := imagecheck.Debugfs(t, fs, "cat /etc/shell-marker"); got != "written-by-shell\n" {
		t.Errorf("/etc/shell-marker holds %q", got)
	}
	if got := imagecheck.Debugfs(t, fs, "cat /etc/motd"); got != "uploaded by the file provisioner\n" {
		t.Errorf("/etc/motd holds %q", got)
	}
	if got := imagecheck.Debugfs(t, fs, "cat /srv/site/www/index.html"); got != "<p>hi</p>\n" {
		t.Errorf("/srv/site/www/index.html (a directory upload) holds %q", got)
	}
	st := imagecheck.Stat(t, fs, []string{"/etc/motd"})
	if len(st) != 1 || st[0].Mode&0o7777 != 0o640 {
		t.Errorf("/etc/motd: %+v, want mode 0640", st)
	}
}

// Store-only mode: Packer's file provisioner uploads into the image being
// built (staged, then written with the closure), keeping the file's mode;
// the shell provisioner is refused with a clear error.
func TestAccStoreOnlyProvisioners(t *testing.T) {
	roots := fixtures.Build(t, "small")
	dir := t.TempDir()
	local := filepath.Join(dir, "tool")
	if err := os.WriteFile(local, []byte("#!/bin/sh\necho tool\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(local, 0o750); err != nil {
		t.Fatal(err)
	}
	build := func(name, provisioners string) (packertest.Result, string) {
		out := filepath.Join(t.TempDir(), "out")
		tmpl := strings.Replace(template("store", fmt.Sprintf(`
  only_nix_store   = true
  store_paths      = %s
  additional_space = "8M"
  output_directory = %q`, hclList(roots), out)), `  sources = ["source.nixos-image.store"]
`, `  sources = ["source.nixos-image.store"]
`+provisioners, 1)
		return runPacker(t, name, tmpl), out
	}
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub", "data"), []byte("data\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	res, out := build("store_file", fmt.Sprintf(`
  provisioner "file" {
    source      = %q
    destination = "/extra/bin/tool"
  }
  provisioner "file" {
    source      = %q
    destination = "/extra"
  }
`, local, tree))
	res.MustSucceed(t)
	img := filepath.Join(out, "nixos.img")
	fs := imagecheck.FS{Image: img, Offset: imagecheck.Partitions(t, img)[0].Start}
	imagecheck.Fsck(t, fs)
	if got := imagecheck.Debugfs(t, fs, "cat /extra/bin/tool"); got != "#!/bin/sh\necho tool\n" {
		t.Errorf("/extra/bin/tool holds %q", got)
	}
	st := imagecheck.Stat(t, fs, []string{"/extra/bin/tool", "/extra/tree/sub/data"})
	if len(st) != 2 || st[0].Mode&0o7777 != 0o750 || st[0].Uid != 0 || st[0].Gid != 0 || st[1].Mode&0o7777 != 0o600 {
		t.Errorf("/extra/bin/tool, /extra/tree/sub/data: %+v, want modes 0750 and 0600 owned by 0:0", st)
	}
	if got := imagecheck.Debugfs(t, fs, "cat /extra/tree/sub/data"); got != "data\n" {
		t.Errorf("/extra/tree/sub/data (a directory upload) holds %q", got)
	}

	res, _ = build("store_shell", `
  provisioner "shell" {
    inline = ["true"]
  }
`)
	if res.Exit == 0 || !strings.Contains(res.Log, "store-only images have no system to run commands in; use install mode") {
		t.Errorf("the shell provisioner in store-only mode: exit %d, want the store-only error:\n%s", res.Exit, tail(res.Log, 3000))
	}
}
