package nixos

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

// Install mode on test systems that behave like real NixOS toplevels where
// the installer VM itself is concerned (issue 10): compressed kernel
// modules, system.etc.overlay, and what activation and the boot loader
// installer leave in the image.

// installReal installs fixture with layout and returns the image and the
// build's log; it fails the test on a failed build or an activation that
// did not exit 0.
func installReal(t *testing.T, name, fixture, layout string) (system, img string, res packertest.Result) {
	t.Helper()
	system = fixtures.Build(t, fixture)[0]
	out := filepath.Join(t.TempDir(), "out")
	res = runPacker(t, name, template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = %q
  additional_space     = "32M"
  accelerator          = "tcg"
  output_directory     = %q`, system, layout, out)))
	res.MustSucceed(t)
	for _, bad := range []string{"Activation exited with status", "modules that failed to load", "Failed to initialize logger"} {
		if strings.Contains(res.Log, bad) {
			t.Errorf("the build output has %q:\n%s", bad, tail(res.Log, 4000))
		}
	}
	img = filepath.Join(out, "nixos.img")
	checkFilesystems(t, img, layout)
	return system, img, res
}

// bootReport boots img from its own boot loader and checks the fields of
// the booted system's report.
func bootReport(t *testing.T, img, system, firmware string, want ...string) {
	t.Helper()
	line := packertest.BootImage(t, img, system, firmware)
	for _, w := range append([]string{"system=" + system, "firmware=" + firmware, "marker=fixture-marker-v1", "root=LABEL=nixos"}, want...) {
		if !strings.Contains(line, " "+w+" ") && !strings.HasSuffix(line, " "+w) {
			t.Errorf("the booted system's report lacks %q:\n%s", w, line)
		}
	}
}

// Modules compressed with zstd (a NixOS kernel built with
// MODULE_COMPRESS_ZSTD, and no MODULE_DECOMPRESS in it): the installer VM
// boots on them, decompressed on the host, and the image boots from GRUB.
// (xz, NixOS's default, is what every other install test's fixture has.)
func TestAccInstallRealZstdModules(t *testing.T) {
	system, img, res := installReal(t, "install_real_zstd", "system-zstd", "legacy")
	if !strings.Contains(res.Log, "Installer VM up") {
		t.Error("the build did not say the installer VM came up")
	}
	bootReport(t, img, system, "bios", "alice=yes")
}

// system.etc.overlay: activation mounts /etc from the system's erofs image
// through a loop device with overlayfs, which the installer initrd
// preloads; the image boots with /etc an overlay.
func TestAccInstallRealEtcOverlay(t *testing.T) {
	system, img, _ := installReal(t, "install_real_overlay", "system-overlay", "legacy")
	bootReport(t, img, system, "bios", "etc=overlay")
}

// What activation and switch-to-configuration leave: HOME was the
// installer's tmpfs, so no /root/.nix-defexpr (systemd-boot's builder runs
// nix-env) and no /homeless-shelter; systemd-tmpfiles applied the
// system's tmpfiles.d; /etc/resolv.conf was left to nixos-enter, which had
// none to bind (setup-etc.pl skips it under IN_NIXOS_ENTER), and the
// boot loader was installed although its installer initialises syslog
// (lo up in the installer).
func TestAccInstallRealLeavesNoHome(t *testing.T) {
	system, img, _ := installReal(t, "install_real_home", "system-efi", "efi")
	parts := imagecheck.Partitions(t, img)
	fs := imagecheck.FS{Image: img, Offset: parts[len(parts)-1].Start}
	names := func(dir string) []string {
		var out []string
		for _, l := range strings.Split(imagecheck.Debugfs(t, fs, "ls -p "+dir), "\n") {
			// /ino/mode/uid/gid/name/size/
			if f := strings.Split(l, "/"); len(f) >= 7 {
				out = append(out, f[5])
			}
		}
		return out
	}
	rootNames, homeNames := names("/"), names("/root")
	if len(rootNames) == 0 || len(homeNames) == 0 {
		t.Fatalf("debugfs listed / as %q and /root as %q", rootNames, homeNames)
	}
	for _, n := range rootNames {
		if n == "homeless-shelter" {
			t.Error("the image has /homeless-shelter")
		}
	}
	for _, n := range homeNames {
		if n == ".nix-defexpr" || n == ".nix-profile" {
			t.Errorf("the image has /root/%s", n)
		}
	}
	bootReport(t, img, system, "efi", "defexpr=no", "homeless=no", "tmpfiles=yes", "resolv=none")
}

// bootctl, given EFI variables (touch_efi_vars), writes no random
// LoaderSystemToken when deterministic: it is told so
// (SYSTEMD_WRITE_SYSTEM_TOKEN=0), not left to guess that it runs in a VM.
func TestAccInstallRealNoSystemToken(t *testing.T) {
	system := fixtures.Build(t, "system-efi")[0]
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "install_real_token", template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "efi"
  touch_efi_vars       = true
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out)))
	res.MustSucceed(t)
	if !strings.Contains(res.Log, "Not writing system token, because $SYSTEMD_WRITE_SYSTEM_TOKEN is set to false") {
		t.Errorf("bootctl did not say it was told to write no system token:\n%s", tail(res.Log, 4000))
	}
	vars, err := os.ReadFile(filepath.Join(out, "efi-vars.fd"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(vars, utf16le("Linux Boot Manager")) || bytes.Contains(vars, utf16le("LoaderSystemToken")) {
		t.Error("efi-vars.fd lacks the boot entry or holds a LoaderSystemToken")
	}
}

// Perl's hash order is fixed for activation even when not deterministic
// (where /etc/shadow is not sorted afterwards): the lines
// update-users-groups.pl appends for new users come in the same order
// in two installs.
func TestAccInstallRealPerlHashOrder(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	shadow := func(name string) string {
		out := filepath.Join(t.TempDir(), "out")
		r := runPacker(t, name, template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  deterministic        = false
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out)))
		r.MustSucceed(t)
		// The order comes from the seed only if every tool the
		// activation's users snippet runs is there.
		if r.Has("not found") {
			t.Errorf("the activation ran a tool the system does not have:\n%s", packertest.Tail(r.Log, 3000))
		}
		img := filepath.Join(out, "nixos.img")
		return imagecheck.Debugfs(t, imagecheck.FS{Image: img, Offset: imagecheck.Partitions(t, img)[0].Start}, "cat /etc/shadow")
	}
	first, second := shadow("install_real_perl_1"), shadow("install_real_perl_2")
	if strings.Count(first, "\n") < 5 {
		t.Fatalf("/etc/shadow holds too few users to tell an order:\n%s", first)
	}
	if first != second {
		t.Errorf("/etc/shadow differs between two installs:\n%s\nthen\n%s", first, second)
	}
}
