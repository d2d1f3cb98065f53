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

// cloudFiles: each cloud format and the file it makes.
var cloudFiles = []struct{ format, file string }{
	{"azure", "nixos.vhd"},
	{"gce", "nixos.tar.gz"},
	{"vmdk-stream", "nixos.vmdk"},
	{"ova", "nixos.ova"},
}

// Store-only images in each cloud's format, through the builder's own
// format key: each cloud's rule checked byte-wise and by the real tools,
// the disk inside equal to the raw image, two builds byte-identical.
func TestAccCloudFormatsStoreOnly(t *testing.T) {
	roots := fixtures.Build(t, "small")
	build := func(name, format string) string {
		out := filepath.Join(t.TempDir(), "out")
		runPacker(t, name, template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = %s
  partition_table_type = "efi"
  additional_space     = "8M"
  format               = %q
  output_directory     = %q`, hclList(roots), format, out))).MustSucceed(t)
		return out
	}
	raw := filepath.Join(build("cloud_raw", "raw"), "nixos.img")
	for _, c := range cloudFiles {
		t.Run(c.format, func(t *testing.T) {
			out1, out2 := build("cloud_"+c.format+"_1", c.format), build("cloud_"+c.format+"_2", c.format)
			if got := dirEntries(t, out1); len(got) != 1 || got[0] != c.file {
				t.Fatalf("output directory holds %v, want only %s", got, c.file)
			}
			img := filepath.Join(out1, c.file)
			imagecheck.CloudImage(t, c.format, img, raw)
			if c.format == "ova" {
				checkOVAFirmware(t, img, "efi") // the efi layout boots only through UEFI
			}
			if imagecheck.SHA256File(t, img) != imagecheck.SHA256File(t, filepath.Join(out2, c.file)) {
				t.Error("two builds of the same inputs differ")
			}
		})
	}
}

// An installed system made into each cloud's format by nixos-convert after
// the builder: the same checks, and byte-identical across two builds.
func TestAccCloudFormatsInstall(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	var pps strings.Builder
	for _, c := range cloudFiles {
		fmt.Fprintf(&pps, `
  post-processor "nixos-convert" {
    format              = %q
    keep_input_artifact = true
  }`, c.format)
	}
	build := func(name string) string {
		out := filepath.Join(t.TempDir(), "out")
		runPacker(t, name, packertest.Template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out), pps.String())).MustSucceed(t)
		return out
	}
	out1, out2 := build("cloud_install_1"), build("cloud_install_2")
	raw := filepath.Join(out1, "nixos.img")
	for _, c := range cloudFiles {
		t.Run(c.format, func(t *testing.T) {
			img := filepath.Join(out1, c.file)
			imagecheck.CloudImage(t, c.format, img, raw)
			if c.format == "ova" {
				checkOVAFirmware(t, img, "bios") // the legacy layout boots through the BIOS
			}
			if imagecheck.SHA256File(t, img) != imagecheck.SHA256File(t, filepath.Join(out2, c.file)) {
				t.Error("two builds of the same inputs differ")
			}
		})
	}
}

// checkOVAFirmware: the descriptor asks VMware for UEFI exactly when want
// is efi.
func checkOVAFirmware(t *testing.T, ova, want string) {
	t.Helper()
	b, err := os.ReadFile(ova)
	if err != nil {
		t.Fatal(err)
	}
	efi := strings.Contains(string(b), `vmw:key="firmware" vmw:value="efi"`)
	if efi != (want == "efi") {
		t.Errorf("ova descriptor asks for UEFI: %v; want firmware %s", efi, want)
	}
}
