package reproducible

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

// conversions are the nixos-convert blocks every build runs on the
// builder's raw image: every format, each file named for it. converted.img
// is a raw copy the others are compared with.
var conversions = []struct{ format, compression, file string }{
	{"raw", "", "converted.img"},
	{"qcow2", "", "converted.qcow2"},
	{"qcow2-compressed", "", "converted-zlib.qcow2"},
	{"qcow2", "zstd", "converted-zstd.qcow2"},
	{"vdi", "", "converted.vdi"},
	{"vpc", "", "converted.vhd"},
	{"vhdx", "", "converted.vhdx"},
	{"vmdk", "", "converted.vmdk"},
}

func qemuFormat(format string) string {
	if strings.HasPrefix(format, "qcow2") {
		return "qcow2"
	}
	return format
}

// template builds source (nixos-image attributes) into out, converts the
// image to every format, then runs nixos-reproducible (with a seed of its
// own) over the builder's raw image.
func template(source, out, provisioners string) string {
	var b strings.Builder
	b.WriteString(provisioners)
	for _, c := range conversions {
		fmt.Fprintf(&b, `
  post-processor "nixos-convert" {
    format              = %q
    compression         = %q
    output              = "%s/%s"
    keep_input_artifact = true
  }`, c.format, c.compression, out, c.file)
	}
	b.WriteString(`
  post-processor "nixos-reproducible" {
    seed              = "another seed"
    source_date_epoch = 1700000000
  }`)
	return packertest.Template("repro", source+fmt.Sprintf("\n  output_directory = %q", out), b.String())
}

func sums(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		out[e.Name()] = imagecheck.SHA256File(t, filepath.Join(dir, e.Name()))
	}
	return out
}

// libfaketime moves the clock of the C programs the build runs (QEMU, and
// with it the installer guest's clock; qemu-img; sqlite3; nix-store); Go's
// clock reads bypass libc, so packer and the plugin keep the real time.
const libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"

// buildTwice builds tmpl(out) twice, with different output directories and
// TMPDIRs, the second with the clock of the tools it runs five days ahead,
// and returns both output directories.
func buildTwice(t *testing.T, name string, tmpl func(out string) string) (string, string) {
	t.Helper()
	var outs [2]string
	for i := range outs {
		dir := t.TempDir()
		outs[i] = filepath.Join(dir, "out")
		tmp := filepath.Join(dir, "tmp")
		if err := os.Mkdir(tmp, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Setenv("TMPDIR", tmp)
		if i == 1 {
			if _, err := os.Stat(libfaketime); err != nil {
				t.Logf("no libfaketime (%v): the second build runs on the real clock", err)
			} else {
				t.Setenv("LD_PRELOAD", libfaketime)
				t.Setenv("FAKETIME", "+5d")
				// QEMU's timers run on the monotonic clock: leave it be.
				t.Setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
			}
		}
		res := packertest.Run(t, fmt.Sprintf("%s_%d", name, i), "nixos-reproducible", tmpl(outs[i]))
		res.MustSucceed(t)
		if i == 0 {
			for _, w := range []string{"partition table (", "container: ", "Normalising "} {
				if !res.Has(w) {
					t.Errorf("the log lacks %q (the post-processors' reports)", w)
				}
			}
		}
	}
	return outs[0], outs[1]
}

// checkIdentical compares every output file of two builds byte for byte,
// and checks each converted image against the raw copy with qemu-img.
func checkIdentical(t *testing.T, a, b string) {
	t.Helper()
	sa, sb := sums(t, a), sums(t, b)
	var names []string
	for n := range sa {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(sa) != len(conversions)+1 || len(sa) != len(sb) {
		t.Errorf("outputs %v and %v; want nixos.img and %d conversions", names, sb, len(conversions))
	}
	for _, n := range names {
		if sa[n] != sb[n] {
			t.Errorf("%s differs between the two builds: %s vs %s", n, sa[n], sb[n])
			if keep := os.Getenv("NIXOS_TEST_KEEP_DIFFS"); keep != "" {
				for i, d := range []string{a, b} {
					exec.Command("cp", "--sparse=always", filepath.Join(d, n), filepath.Join(keep, fmt.Sprintf("%d-%s", i, n))).Run()
				}
			}
		}
	}
	raw := filepath.Join(a, "converted.img")
	for _, c := range conversions[1:] {
		q := qemuFormat(c.format)
		p := filepath.Join(a, c.file)
		if q != "vpc" {
			if out, err := exec.Command("qemu-img", "check", "-f", q, p).CombinedOutput(); err != nil {
				t.Errorf("qemu-img check %s: %v\n%s", c.file, err, out)
			}
		}
		if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", q, raw, p).CombinedOutput(); err != nil {
			t.Errorf("qemu-img compare %s: %v\n%s", c.file, err, out)
		}
	}
}

// Store-only: two builds minutes apart, in other directories, give the
// same bytes in every format; a changed input (one file's content) changes
// the raw image and every container, UUIDs included.
func TestAccReproducibleStoreOnly(t *testing.T) {
	roots := fixtures.Build(t, "small")
	source := fmt.Sprintf("  only_nix_store = true\n  store_paths    = %s", packertest.HCLList(roots))
	contents := func(v string) string {
		return fmt.Sprintf(`
  provisioner "nixos-contents" {
    content {
      inline = %q
      target = "/etc/version"
    }
  }`, v)
	}
	a, b := buildTwice(t, "repro_store", func(out string) string { return template(source, out, contents("v1\n")) })
	checkIdentical(t, a, b)

	out := filepath.Join(t.TempDir(), "out")
	packertest.Run(t, "repro_store_changed", "nixos-reproducible", template(source, out, contents("v2\n"))).MustSucceed(t)
	sa, sc := sums(t, a), sums(t, out)
	for n := range sa {
		if sa[n] == sc[n] {
			t.Errorf("%s is the same for a changed input", n)
		}
	}
}

// Install mode, legacy (GRUB) and EFI (systemd-boot): byte-identical in
// every format, and the image nixos-reproducible rewrote (times lowered,
// GUIDs kept) still boots through its own boot loader.
func TestAccReproducibleInstall(t *testing.T) {
	for _, c := range []struct{ fixture, layout, firmware string }{
		{"system-bios", "legacy", "bios"},
		{"system-efi", "efi", "efi"},
	} {
		t.Run(c.layout, func(t *testing.T) {
			system := fixtures.Build(t, c.fixture)[0]
			source := fmt.Sprintf(`  system               = %q
  partition_table_type = %q
  additional_space     = "16M"
  accelerator          = "tcg"`, system, c.layout)
			a, b := buildTwice(t, "repro_install_"+c.layout, func(out string) string { return template(source, out, "") })
			checkIdentical(t, a, b)

			// What activation and bootctl leave to chance is settled at
			// build time: /etc/shadow sorted, no machine-id, no random seed.
			// Checked in the raw copy nixos-convert made before
			// nixos-reproducible ran, which would sort shadow itself.
			built := filepath.Join(a, "converted.img")
			parts := imagecheck.Partitions(t, built)
			root := imagecheck.FS{Image: built, Offset: parts[len(parts)-1].Start}
			shadow := imagecheck.Debugfs(t, root, "cat /etc/shadow")
			lines := strings.Split(strings.TrimSpace(shadow), "\n")
			if len(lines) < 2 || !sort.StringsAreSorted(lines) {
				t.Errorf("/etc/shadow is not sorted:\n%s", shadow)
			}
			if got := imagecheck.Debugfs(t, root, "ls /etc"); !strings.Contains(got, "passwd") || strings.Contains(got, "machine-id") {
				t.Errorf("/etc holds machine-id (or no passwd): %s", got)
			}
			if c.firmware == "efi" {
				esp := fmt.Sprintf("%s@@%d", built, parts[0].Start)
				out, err := exec.Command("mdir", "-b", "-i", esp, "::/loader").CombinedOutput()
				if err != nil || strings.Contains(string(out), "random-seed") || !strings.Contains(string(out), "loader.conf") {
					t.Errorf("ESP /loader: %v\n%s", err, out)
				}
			}

			// The image nixos-reproducible rewrote still boots.
			line := packertest.BootImage(t, filepath.Join(a, "nixos.img"), system, c.firmware)
			if !strings.Contains(line, "firmware="+c.firmware) || !strings.Contains(line, "marker=fixture-marker-v1") {
				t.Errorf("the normalised image booted to %q", line)
			}
		})
	}
}

// Another builder's image: Packer's file builder hands over a GPT disk made
// by sgdisk and mkfs.ext4 (random GUIDs, a random-free but clock-stamped
// filesystem); two such disks made seconds apart come out of
// nixos-reproducible with rederive_ids byte-identical, and still sound.
// The filesystem fits its partition (62 MiB of 63 MiB less the backup
// GPT): one that ran into the backup GPT, as this test's once did, is now
// left alone, as issue 11 asks.
func TestAccReproducibleForeignImage(t *testing.T) {
	var outs [2]string
	for i := range outs {
		dir := t.TempDir()
		src := filepath.Join(dir, "made-elsewhere.img")
		script := fmt.Sprintf(`truncate -s 64M %[1]s
sgdisk -o -n1:2048:0 -t1:8300 %[1]s >/dev/null
mkfs.ext4 -q -F -b 4096 -U 3f6b2a4e-8c1d-4f0e-9a57-2d7c1b9e0f11 -E offset=1048576,hash_seed=3f6b2a4e-8c1d-4f0e-9a57-2d7c1b9e0f11 %[1]s 62M`, src)
		if out, err := exec.Command("sh", "-ec", script).CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		outs[i] = filepath.Join(dir, "out.img")
		res := packertest.Run(t, fmt.Sprintf("repro_foreign_%d", i), "nixos-reproducible", fmt.Sprintf(`source "file" "disk" {
  source = %q
  target = %q
}

build {
  sources = ["source.file.disk"]
  post-processor "nixos-reproducible" {
    seed         = "foreign"
    rederive_ids = true
  }
}
`, src, outs[i]))
		res.MustSucceed(t)
		for _, w := range []string{"partition table (gpt): MBR disk signature, disk GUID, partition 1 GUID", "partition 1 (ext4): "} {
			if !res.Has(w) {
				t.Errorf("the report lacks %q", w)
			}
		}
		if res.Has("left alone: partition 1") {
			t.Error("the ext4 was left alone, not normalised")
		}
		if i == 0 {
			time.Sleep(1100 * time.Millisecond) // the next mkfs stamps another second
		}
	}
	if a, b := imagecheck.SHA256File(t, outs[0]), imagecheck.SHA256File(t, outs[1]); a != b {
		t.Errorf("two normalised disks differ: %s vs %s", a, b)
	}
	imagecheck.Fsck(t, imagecheck.FS{Image: outs[0], Offset: 1 << 20})
	if out, err := exec.Command("sgdisk", "-v", outs[0]).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Errorf("sgdisk -v: %v\n%s", err, out)
	}
}
