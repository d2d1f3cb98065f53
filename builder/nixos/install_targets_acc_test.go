package nixos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

// What the system wants and the layout or the installer VM cannot give is
// refused before any VM boots or any output exists, saying what the system
// expects, what the layout gives, and what to change.
func TestAccInstallBootTargetsRefused(t *testing.T) {
	for _, tc := range []struct {
		name, fixture, layout, extra, want string
	}{
		// systemd-boot baked with its ESP on /efi and XBOOTLDR on /boot.
		{"xbootldr_on_efi", "system-efi-xbootldr", "efi", "",
			`the system mounts its ESP at /efi and XBOOTLDR at /boot (etc/fstab), but partition_table_type = "efi" has only an ESP; use "efixbootldr"`},
		// GRUB for EFI with canTouchEfiVariables, and no EFI variables.
		{"grub_efi_without_vars", "system-grub-efi", "efi", "",
			"the system's GRUB installs for EFI with boot.loader.efi.canTouchEfiVariables = true (grub-config.xml), so it registers its boot entry in the firmware's EFI variables, " +
				"but touch_efi_vars = false gives the installer VM none and GRUB's installation fails; set touch_efi_vars = true"},
		// boot.json lists initrdSecrets.
		{"initrd_secrets", "system-secrets", "efi", "",
			"the system has initrd secrets (boot.initrd.secrets; initrdSecrets in boot.json)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			system := fixtures.Build(t, tc.fixture)[0]
			out := filepath.Join(t.TempDir(), "out")
			res := runPacker(t, "install_refused_"+tc.name, template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = %q
  accelerator          = "tcg"
  output_directory     = %q
%s`, system, tc.layout, out, tc.extra)))
			if res.Exit == 0 || !strings.Contains(res.Log, tc.want) {
				t.Fatalf("exit %d; want the build refused with %q:\n%s", res.Exit, tc.want, tail(res.Log, 4000))
			}
			if strings.Contains(res.Log, "Booting the installer VM") || strings.Contains(res.Log, "Measuring the closure") {
				t.Error("the build got as far as the image or the VM before refusing")
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output directory created for a refused build: %v", err)
			}
		})
	}
}

// GRUB for EFI with canTouchEfiVariables and touch_efi_vars: GRUB installs
// under OVMF into the ESP on /boot/efi and registers its boot entry, and the
// image boots through that entry, from the efi-vars.fd the build keeps.
func TestAccInstallGRUBEFIWithEFIVars(t *testing.T) {
	system := fixtures.Build(t, "system-grub-efi")[0]
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "install_grub_efi", template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "efi"
  touch_efi_vars       = true
  additional_space     = "32M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out)))
	res.MustSucceed(t)
	if !strings.Contains(res.Log, "Boot: boot loader GRUB, ESP on /boot/efi") {
		t.Errorf("the build did not say where GRUB's ESP goes:\n%s", tail(res.Log, 3000))
	}
	img := filepath.Join(out, "nixos.img")
	checkFilesystems(t, img, "efi")
	// Debian's GRUB 2.06 EFI runs out of memory loading the kernel at 256 MiB.
	line := packertest.BootImageMem(t, img, system, "efi:"+filepath.Join(out, EFIVarsFile), 384)
	for _, want := range []string{"firmware=efi", "alice=yes", "marker=fixture-marker-v1"} {
		if !strings.Contains(line, want) {
			t.Errorf("booted system's report lacks %q:\n%s", want, line)
		}
	}
}

// install_bootloader = false is nixos-install --no-bootloader: the system is
// activated, switch-to-configuration never runs, and the ESP stays empty.
func TestAccInstallWithoutBootLoader(t *testing.T) {
	system := fixtures.Build(t, "system-efi")[0]
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "install_no_bootloader", template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "efi"
  install_bootloader   = false
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out)))
	res.MustSucceed(t)
	if !strings.Contains(res.Log, "Activating the system") || !strings.Contains(res.Log, "Not installing a boot loader (install_bootloader = false), as nixos-install --no-bootloader") {
		t.Errorf("the build did not activate without a boot loader:\n%s", tail(res.Log, 3000))
	}
	if strings.Contains(res.Log, "Installing the boot loader") {
		t.Error("the build installed a boot loader")
	}
	img := filepath.Join(out, "nixos.img")
	checkFilesystems(t, img, "efi")
	if files := espFiles(t, img); len(files) != 0 {
		t.Errorf("the ESP holds %q; want it empty", files)
	}
	// Activation did run: the system's user exists.
	fs := imagecheck.FS{Image: img, Offset: lastPartition(t, img)}
	if passwd := imagecheck.Debugfs(t, fs, "cat /etc/passwd"); !strings.Contains(passwd, "alice:") {
		t.Errorf("/etc/passwd lacks the user activation makes:\n%s", passwd)
	}
}

// espFiles lists the files and directories at the root of the image's ESP.
func espFiles(t *testing.T, img string) []string {
	t.Helper()
	imagecheck.RequireTool(t, "mdir")
	for _, p := range imagecheck.Partitions(t, img) {
		if !strings.EqualFold(p.Type, typeESP) {
			continue
		}
		cmd := exec.Command("mdir", "-b", "-i", fmt.Sprintf("%s@@%d", img, p.Start), "::")
		cmd.Env = append(os.Environ(), "MTOOLSRC=/dev/null", "MTOOLS_SKIP_CHECK=1", "HOME="+t.TempDir())
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mdir: %v\n%s", err, b)
		}
		return strings.Fields(string(b))
	}
	t.Fatal("the image has no ESP")
	return nil
}

// lastPartition is where the root partition starts.
func lastPartition(t *testing.T, img string) int64 {
	t.Helper()
	parts := imagecheck.Partitions(t, img)
	return parts[len(parts)-1].Start
}
