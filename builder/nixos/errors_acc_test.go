package nixos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

// Every bad key is reported at once, by name, with what is allowed, and no
// output directory is created.
func TestAccBadKeys(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "bad_keys", template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = ["/usr/bin/env", "/nix/store/x/y"]
  disk_size            = "huge"
  additional_space     = "-5"
  boot_size            = "1K"
  partition_table_type = "gpt"
  fs_type              = "btrfs"
  label                = "a-label-longer-than-sixteen"
  root_fs_uuid         = "not-a-uuid"
  root_partition_guid  = "1234"
  format               = "qed"
  image_name           = "a/b"
  output_directory     = %q`, out)))
	if res.Exit == 0 {
		t.Fatal("packer build succeeded with bad keys")
	}
	for _, want := range []string{
		`store_paths: "/usr/bin/env" is not a store path`,
		`store_paths: "/nix/store/x/y" is not a store path`,
		`disk_size: "huge" is not "auto" or a size`,
		`additional_space: "-5" is not a size`,
		`boot_size: "1K" is not a size of at least 1M`,
		`partition_table_type: unknown partition table type "gpt": allowed values are`,
		`fs_type: "btrfs" is not supported; allowed: ext4`,
		`label: "a-label-longer-than-sixteen" is 27 bytes long`,
		`root_fs_uuid: "not-a-uuid" is not a UUID`,
		`root_partition_guid: "1234" is not a GUID`,
		`format: "qed" is not a known format; allowed: azure, gce, ova, qcow2, qcow2-compressed, raw, vdi, vhdx, vmdk, vmdk-stream, vpc`,
		`image_name: "a/b" must be a plain file name`,
	} {
		if !strings.Contains(res.Log, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output directory exists after a configuration error: %v", err)
	}
}

// Errors found once the closure is known: a path that is not a valid store
// path, and a disk_size too small, whose message gives the size needed.
func TestAccBadInputs(t *testing.T) {
	roots := fixtures.Build(t, "tiny64")
	missing := "/nix/store/00000000000000000000000000000000-not-there"
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "missing_path", template("store", fmt.Sprintf(`
  only_nix_store   = true
  store_paths      = [%q]
  output_directory = %q`, missing, out)))
	if res.Exit == 0 || !strings.Contains(res.Log, "store_paths: ") || !strings.Contains(res.Log, missing) {
		t.Errorf("a missing store path: exit %d, want an error naming store_paths and the path:\n%s", res.Exit, tail(res.Log, 3000))
	}

	res = runPacker(t, "too_small", template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = %s
  partition_table_type = "efi"
  disk_size            = "100M"
  output_directory     = %q`, hclList(roots), out)))
	m := regexp.MustCompile(`disk_size: 100M is too small for this closure: the image needs at least [0-9]+ MiB`).FindString(res.Log)
	if res.Exit == 0 || m == "" {
		t.Errorf("disk_size too small: exit %d, message %q; want an error naming disk_size, the size given and the size needed:\n%s", res.Exit, m, tail(res.Log, 3000))
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output directory left behind by a failed build: %v", err)
	}

	// -on-error=abort keeps what the failed build made, for inspection:
	// its temporary directories too, so they go where the test removes them.
	accSetTmpdir(t)
	res = runPacker(t, "too_small_abort", template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = %s
  partition_table_type = "efi"
  disk_size            = "100M"
  output_directory     = %q`, hclList(roots), out)), "-on-error=abort")
	if res.Exit == 0 || !strings.Contains(res.Log, "aborting without cleanup") {
		t.Errorf("-on-error=abort: exit %d, want the failure and no cleanup:\n%s", res.Exit, tail(res.Log, 3000))
	}
	if _, err := os.Stat(out); err != nil {
		t.Errorf("-on-error=abort removed the output directory: %v", err)
	}
}

// An existing output directory is refused and left as it was; -force
// replaces it.
func TestAccOutputDirectoryExists(t *testing.T) {
	roots := fixtures.Build(t, "small")
	out := filepath.Join(t.TempDir(), "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(out, "precious")
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	tmpl := template("store", fmt.Sprintf(`
  only_nix_store   = true
  store_paths      = %s
  additional_space = "8M"
  output_directory = %q`, hclList(roots), out))
	res := runPacker(t, "outdir_exists", tmpl)
	if res.Exit == 0 || !strings.Contains(res.Log, "output_directory "+out+" exists") {
		t.Fatalf("exit %d; want a refusal naming the existing output directory:\n%s", res.Exit, tail(res.Log, 3000))
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "mine" {
		t.Fatalf("the user's file was touched: %q, %v", b, err)
	}
	runPacker(t, "outdir_force", tmpl, "-force").MustSucceed(t)
	if got := dirEntries(t, out); len(got) != 1 || got[0] != "nixos.img" {
		t.Fatalf("after -force the output directory holds %v", got)
	}
}

// Ctrl-C while the closure streams into the image: packer stops, and no
// plugin process, partial image or output directory is left behind.
func TestAccInterrupt(t *testing.T) {
	roots := fixtures.Build(t, "large4g")
	out := filepath.Join(t.TempDir(), "out")
	interruptBuild(t, out, "Writing the ext4 filesystem", 500*time.Millisecond, template("store", fmt.Sprintf(`
  only_nix_store   = true
  store_paths      = %s
  additional_space = "0"
  output_directory = %q`, hclList(roots), out)))
}

// Ctrl-C at each install-mode step leaves no QEMU process, socket, temp
// directory or output behind.
func TestAccInstallInterrupt(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	// The last trigger is a provisioner's output while it sleeps: Ctrl-C
	// must also stop a command running in the guest.
	for _, at := range []string{"Registering", "Booting the installer VM", "Installer VM up", "provisioner-sleeping"} {
		t.Run(strings.ReplaceAll(at, " ", "_"), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			tmpl := strings.Replace(template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out)), `  sources = ["source.nixos-image.inst"]
`, `  sources = ["source.nixos-image.inst"]
  provisioner "shell" {
    inline_shebang = "/run/current-system/sw/bin/sh -e"
    inline         = ["echo provisioner-sleeping", "sleep 120"]
  }
`, 1)
			interruptBuild(t, out, at, 0, tmpl)
		})
	}
}

// interruptBuild runs packer build, sends Ctrl-C once a line containing
// trigger appears (plus delay), and checks that nothing is left behind. The
// build gets a TMPDIR of its own, so that what other tests running at the
// same time leave in /tmp is not taken for its debris.
func interruptBuild(t *testing.T, out, trigger string, delay time.Duration, tmpl string) {
	t.Helper()
	tmp := accSetTmpdir(t)
	packertest.Interrupt(t, tmpl, trigger, delay)
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(out)
		t.Errorf("output directory left behind after Ctrl-C (%v): %v", err, ents)
	}
	// QEMU runs in a process group of its own: found by the image path.
	if procs, _ := exec.Command("pgrep", "-f", "qemu-system.*"+regexp.QuoteMeta(out)).Output(); len(procs) > 0 {
		t.Errorf("QEMU processes left running: %s", procs)
	}
	accRequireEmpty(t, tmp, "TMPDIR after Ctrl-C")
}
