package convert

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

func storeSource(roots []string, out string) string {
	return fmt.Sprintf(`  only_nix_store   = true
  store_paths      = %s
  output_directory = %q`, packertest.HCLList(roots), out)
}

func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nixos-convert → Packer's checksum → compress → manifest in one template:
// the converted image is what the raw image holds, and each of Packer's
// post-processors reads what nixos-convert hands on.
func TestAccConvertChain(t *testing.T) {
	roots := fixtures.Build(t, "small")
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	res := packertest.Run(t, "convert_chain", "nixos-convert", packertest.Template("chain", storeSource(roots, out), fmt.Sprintf(`
  post-processors {
    post-processor "nixos-convert" {
      format              = "qcow2"
      compression         = "zstd"
      keep_input_artifact = true
    }
    post-processor "checksum" {
      checksum_types = ["sha256"]
      output         = "%[1]s/{{.BuildName}}.{{.ChecksumType}}"
    }
    post-processor "compress" {
      output              = "%[1]s/nixos.tar.gz"
      keep_input_artifact = true
    }
    post-processor "manifest" {
      output = "%[1]s/manifest.json"
    }
  }`, out)))
	res.MustSucceed(t)

	raw, qcow := filepath.Join(out, "nixos.img"), filepath.Join(out, "nixos.qcow2")
	qemuImg(t, "check", "-f", "qcow2", qcow)
	if got := qemuImg(t, "compare", "-f", "raw", "-F", "qcow2", raw, qcow); !strings.Contains(got, "Images are identical") {
		t.Errorf("qemu-img compare: %s", got)
	}
	if info := qemuImg(t, "info", "-f", "qcow2", qcow); !strings.Contains(info, "compression type: zstd") {
		t.Errorf("not zstd-compressed:\n%s", info)
	}

	sums, err := os.ReadFile(filepath.Join(out, "chain.sha256"))
	if err != nil {
		t.Fatal(err)
	}
	if want := imagecheck.SHA256File(t, qcow) + "\tnixos.qcow2\n"; string(sums) != want {
		t.Errorf("checksum file holds %q, want %q", sums, want)
	}

	list, err := exec.Command("tar", "-tzf", filepath.Join(out, "nixos.tar.gz")).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tzf: %v\n%s", err, list)
	}
	for _, f := range []string{"nixos.qcow2", "chain.sha256"} {
		if !strings.Contains(string(list), f) {
			t.Errorf("the compressed archive lacks %s:\n%s", f, list)
		}
	}

	var manifest struct {
		Builds []struct {
			BuilderType string `json:"builder_type"`
			Files       []struct {
				Name string `json:"name"`
			} `json:"files"`
		} `json:"builds"`
	}
	b, err := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Builds) != 1 || manifest.Builds[0].BuilderType != "nixos-image" || len(manifest.Builds[0].Files) == 0 ||
		!strings.HasSuffix(manifest.Builds[0].Files[0].Name, "nixos.tar.gz") {
		t.Errorf("manifest.json: %s", b)
	}
}

// Another builder's artifact: Packer's file builder hands over a raw disk
// image by name alone; nixos-convert finds it by extension, reads its format
// from its header, and converts it to every format.
func TestAccConvertForeignArtifact(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.img")
	if out, err := exec.Command("sh", "-c", "truncate -s 64M "+src+" && printf 'label: gpt\\n,,L\\n' | sfdisk -q "+src).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	out := filepath.Join(dir, "out")
	var pps strings.Builder
	formats := map[string]string{"vdi": "vdi", "vpc": "vhd", "vhdx": "vhdx", "vmdk": "vmdk", "raw": "img"}
	for f, ext := range formats {
		fmt.Fprintf(&pps, `
  post-processor "nixos-convert" {
    format              = %q
    output              = "%s/converted.%s"
    keep_input_artifact = true
  }`, f, out, ext)
	}
	tmpl := fmt.Sprintf(`source "file" "disk" {
  source = %q
  target = "%s/other.img"
}

build {
  sources = ["source.file.disk"]
%s
}
`, src, out, pps.String())
	packertest.Run(t, "convert_foreign", "nixos-convert", tmpl).MustSucceed(t)
	for f, ext := range formats {
		q := f
		got := qemuImg(t, "compare", "-f", "raw", "-F", q, src, filepath.Join(out, "converted."+ext))
		if !strings.Contains(got, "Images are identical") {
			t.Errorf("%s: %s", f, got)
		}
	}
}

// Bad keys fail before any work, naming the key and what is allowed; an
// artifact without a disk image is refused naming its BuilderId; an
// existing output is left alone without -force.
func TestAccConvertErrors(t *testing.T) {
	roots := fixtures.Build(t, "small")
	for name, c := range map[string]struct{ pp, want string }{
		"no_format":     {`format = ""`, `format: required; allowed: azure, gce, ova, qcow2, qcow2-compressed, raw, vdi, vhdx, vmdk, vmdk-stream, vpc`},
		"bad_format":    {`format = "qed"`, `format: "qed" is not a known format; allowed: azure, gce, ova, qcow2, qcow2-compressed, raw, vdi, vhdx, vmdk, vmdk-stream, vpc`},
		"compress_vdi":  {"format = \"vdi\"\n      compression = \"zstd\"", `compression: only qcow2 images are compressed; format is "vdi"`},
		"bad_algorithm": {"format = \"qcow2\"\n      compression = \"lz4\"", `compression: "lz4" is not allowed; allowed: zlib, zstd`},
		"both_bad":      {"format = \"qed\"\n      compression = \"lz4\"", "* format: \"qed\" is not a known format; allowed: azure, gce, ova, qcow2, qcow2-compressed, raw, vdi, vhdx, vmdk, vmdk-stream, vpc * compression: \"lz4\" is not allowed"},
		"bad_epoch":     {"format = \"vdi\"\n      source_date_epoch = -5", `source_date_epoch: -5 is outside 0..4294967295`},
	} {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			res := packertest.Run(t, "convert_err_"+name, "nixos-convert", packertest.Template("e", storeSource(roots, out), `
  post-processor "nixos-convert" {
      `+c.pp+`
  }`))
			if res.Exit == 0 {
				t.Fatalf("packer build succeeded; want %q", c.want)
			}
			if !res.Has(c.want) {
				t.Errorf("the log lacks %q:\n%s", c.want, packertest.Tail(res.Log, 3000))
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("a configuration error still built %s", out)
			}
		})
	}

	t.Run("no_disk", func(t *testing.T) {
		res := packertest.Run(t, "convert_err_no_disk", "nixos-convert", `source "null" "n" {
  communicator = "none"
}

build {
  sources = ["source.null.n"]
  post-processor "nixos-convert" {
    format = "qcow2"
  }
}
`)
		want := `nixos-convert: the input artifact (BuilderId "fnoeding.null") has no disk image among its files`
		if res.Exit == 0 || !res.Has(want) {
			t.Errorf("exit %d; the log lacks %q:\n%s", res.Exit, want, packertest.Tail(res.Log, 3000))
		}
	})

	t.Run("existing_output", func(t *testing.T) {
		dir := t.TempDir()
		out, mine := filepath.Join(dir, "out"), filepath.Join(dir, "mine.vdi")
		if err := os.WriteFile(mine, []byte("the user's file"), 0o644); err != nil {
			t.Fatal(err)
		}
		tmpl := packertest.Template("e", storeSource(roots, out), fmt.Sprintf(`
  post-processor "nixos-convert" {
    format = "vdi"
    output = %q
  }`, mine))
		res := packertest.Run(t, "convert_err_exists", "nixos-convert", tmpl)
		want := "output: " + mine + " exists; remove it or use packer build -force"
		if res.Exit == 0 || !res.Has(want) {
			t.Errorf("exit %d; the log lacks %q:\n%s", res.Exit, want, packertest.Tail(res.Log, 3000))
		}
		if b, _ := os.ReadFile(mine); string(b) != "the user's file" {
			t.Errorf("the existing output was changed: %q", b)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 2 {
			t.Errorf("leftovers beside the output: %v", ents)
		}
		// With -force it is replaced.
		os.RemoveAll(out)
		packertest.Run(t, "convert_force", "nixos-convert", tmpl, "-force").MustSucceed(t)
		qemuImg(t, "check", "-f", "vdi", mine)
		// keep_input_artifact unset: Packer deleted the builder's image,
		// and nothing else.
		if _, err := os.Stat(filepath.Join(out, "nixos.img")); !os.IsNotExist(err) {
			t.Errorf("the input image was kept without keep_input_artifact: %v", err)
		}
	})
}

// Ctrl-C during a conversion stops qemu-img and leaves no half-written
// image or staging directory. (The builder's image goes too: Packer deletes
// the input of a failed post-processor unless an earlier one kept it.)
func TestAccConvertInterrupt(t *testing.T) {
	roots := fixtures.Build(t, "large4g")
	out := filepath.Join(t.TempDir(), "out")
	packertest.Interrupt(t, packertest.Template("big", storeSource(roots, out), `
  post-processor "nixos-convert" {
    format = "qcow2-compressed"
  }`), "Converting ", 1500*time.Millisecond)
	ents, err := os.ReadDir(out)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "nixos.img" {
			t.Errorf("after Ctrl-C the output directory holds %s", e.Name())
		}
	}
	if procs, _ := exec.Command("pgrep", "-f", "qemu-img convert.*"+regexp.QuoteMeta(out)).Output(); len(procs) > 0 {
		t.Errorf("qemu-img left running: %s", procs)
	}
}

// Packer's vagrant post-processor (plugin github.com/hashicorp/vagrant, which
// make setup installs) makes a libvirt box from what nixos-convert hands on:
// it reads diskName, diskType, diskSize and domainType.
func TestAccConvertVagrantLibvirt(t *testing.T) {
	roots := fixtures.Build(t, "small")
	out := filepath.Join(t.TempDir(), "out")
	box := filepath.Join(out, "nixos.box")
	res := packertest.Run(t, "convert_vagrant", "nixos-convert", packertest.Template("box", storeSource(roots, out), fmt.Sprintf(`
  post-processors {
    post-processor "nixos-convert" {
      format              = "qcow2"
      keep_input_artifact = true
    }
    post-processor "vagrant" {
      provider_override = "libvirt"
      output            = %q
    }
  }`, box)))
	res.MustSucceed(t)

	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xzf", box, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar -xzf %s: %v\n%s", box, err, out)
	}
	var meta struct {
		Provider    string `json:"provider"`
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual_size"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "metadata.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	if meta.Provider != "libvirt" || meta.Format != "qcow2" || meta.VirtualSize < 1 {
		t.Errorf("metadata.json: %s", b)
	}
	if vf, _ := os.ReadFile(filepath.Join(dir, "Vagrantfile")); !strings.Contains(string(vf), `libvirt.driver = "kvm"`) {
		t.Errorf("Vagrantfile (domainType kvm, libvirt's default, what the box's users run):\n%s", vf)
	}
	if got := qemuImg(t, "compare", "-f", "raw", "-F", "qcow2", filepath.Join(out, "nixos.img"), filepath.Join(dir, "box.img")); !strings.Contains(got, "Images are identical") {
		t.Errorf("box.img: %s", got)
	}
}
