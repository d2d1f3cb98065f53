package nixos

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/imagecheck"
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

  provisioner "shell" {
    # The test system has no /bin/sh (real NixOS activation makes one).
    inline_shebang = "/run/current-system/sw/bin/sh -e"
    inline = [
      "echo shell-saw-$(cat /etc/test-marker)-and-$(cat /etc/motd | tr ' ' '_')",
      "echo written-by-shell > /etc/shell-marker",
    ]
  }
`, local), 1)
	res := runPacker(t, "install_provisioners", tmpl)
	res.mustSucceed(t)
	if !strings.Contains(res.log, "shell-saw-fixture-marker-v1-and-uploaded_by_the_file_provisioner") {
		t.Errorf("the shell provisioner's output is not in the log:\n%s", tail(res.log, 4000))
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
	st := imagecheck.Stat(t, fs, []string{"/etc/motd"})
	if len(st) != 1 || st[0].Mode&0o7777 != 0o640 {
		t.Errorf("/etc/motd: %+v, want mode 0640", st)
	}
}
