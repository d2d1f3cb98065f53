package nixos

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
)

// Install mode with each layout: the installer VM activates the system and
// installs its boot loader onto the targets the system names (the ESP and
// XBOOTLDR where it mounts them, GRUB's /dev/sda linked to the VM's disk);
// then the image boots from that boot loader (GRUB under SeaBIOS,
// systemd-boot under OVMF) and the booted system reports the kernel command
// line, the root it found by label, a file from the root filesystem and the
// user activation made.
func TestAccInstallLayouts(t *testing.T) {
	cases := []struct {
		name, layout, fixture, firmware string
		extra                           string
		log                             []string // what the build says besides the common lines
	}{
		// GRUB for BIOS onto /dev/sda, which the installer links to /dev/vda.
		{"legacy", "legacy", "system-bios", "bios", "", []string{"Linking /dev/sda to the VM's disk /dev/vda for GRUB", "switch-to-configuration boot"}},
		{"legacy_gpt", "legacy+gpt", "system-bios", "bios", "", []string{"Linking /dev/sda to the VM's disk /dev/vda for GRUB"}},
		// systemd-boot with its ESP on /boot, /boot/efi, or on /efi beside
		// XBOOTLDR on /boot, each baked into its builder.
		{"efi", "efi", "system-efi", "efi", "", []string{"Boot: boot loader systemd-boot, ESP on /boot"}},
		{"efi_bootefi", "efi", "system-efi-bootefi", "efi", "", []string{"ESP on /boot/efi"}},
		{"efixbootldr", "efixbootldr", "system-efi-xbootldr", "efi", "", []string{"ESP on /efi, XBOOTLDR on /boot"}},
		// GRUB in the BIOS boot partition and systemd-boot in the ESP: the
		// same disk boots under both firmwares.
		{"hybrid", "hybrid", "system-hybrid", "bios+efi", "", nil},
		// No partition table, nothing to install a boot loader into: the
		// image is booted with the system's kernel and initrd.
		{"none", "none", "system-bios", "kernel", "  install_bootloader = false", []string{"Not installing a boot loader (install_bootloader = false)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			system := fixtures.Build(t, tc.fixture)[0]
			out := filepath.Join(t.TempDir(), "out")
			res := runPacker(t, "install_"+tc.name, template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = %q
  additional_space     = "32M"
  accelerator          = "tcg"
  output_directory     = %q
%s`, system, tc.layout, out, tc.extra)))
			res.MustSucceed(t)
			for _, want := range append([]string{"Activating the system", "installer: [agent]", "Powering the installer VM off"}, tc.log...) {
				if !strings.Contains(res.Log, want) {
					t.Errorf("the build output lacks %q", want)
				}
			}
			img := filepath.Join(out, "nixos.img")
			if got := dirEntries(t, out); len(got) != 1 || got[0] != "nixos.img" {
				t.Fatalf("output directory holds %v, want only nixos.img", got)
			}
			checkFilesystems(t, img, tc.layout)

			for _, firmware := range strings.Split(tc.firmware, "+") {
				line := packertest.BootImage(t, img, system, firmware)
				for _, want := range []string{
					"system=" + system,
					"marker=fixture-marker-v1",
					"alice=yes",
					"root=LABEL=nixos",
				} {
					if !strings.Contains(line, want) {
						t.Errorf("booted system's report (%s) lacks %q:\n%s", firmware, want, line)
					}
				}
				if firmware != "kernel" && !strings.Contains(line, "firmware="+firmware) {
					t.Errorf("booted through the wrong firmware, want %s:\n%s", firmware, line)
				}
			}
		})
	}
}

// The installer VM's memory does not grow with the closure: a 2 GiB closure
// installs at the default mem_size = 256, as the 64 MiB one does.
func TestAccInstallBigClosureSmallMemory(t *testing.T) {
	system := fixtures.Build(t, "system-big")[0]
	out := filepath.Join(t.TempDir(), "out")
	runPacker(t, "install_big", template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  mem_size             = 256
  accelerator          = "tcg"
  output_directory     = %q`, system, out))).MustSucceed(t)
	img := filepath.Join(out, "nixos.img")
	checkFilesystems(t, img, "legacy")
	line := packertest.BootImage(t, img, system, "bios")
	if !strings.Contains(line, "marker=fixture-marker-v1") {
		t.Errorf("booted system's report: %s", line)
	}
}

// A store path that is not a system is refused before any work.
func TestAccInstallNotASystem(t *testing.T) {
	roots := fixtures.Build(t, "small")
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "install_not_system", template("inst", fmt.Sprintf(`
  system           = %q
  output_directory = %q`, roots[0], out)))
	if res.Exit == 0 || !strings.Contains(res.Log, "system: "+roots[0]+" is not a NixOS system") {
		t.Fatalf("exit %d; want an error naming system and the path:\n%s", res.Exit, tail(res.Log, 3000))
	}
	if dirEntries(t, filepath.Dir(out)) != nil {
		t.Error("an output directory was created for a refused system")
	}
}

// checkFilesystems runs e2fsck on the root and fsck.vfat on each FAT
// partition of an installed image.
func checkFilesystems(t *testing.T, img, layout string) {
	t.Helper()
	fs := imagecheck.FS{Image: img}
	if layout != "none" {
		parts := imagecheck.Partitions(t, img)
		root := parts[len(parts)-1]
		fs.Offset = root.Start
		for _, p := range parts {
			if strings.EqualFold(p.Type, typeESP) || strings.EqualFold(p.Type, typeXBootLdr) {
				if out, err := fsckVfatAt(t, img, p.Start, p.Size); err != nil {
					t.Errorf("fsck.vfat -n on partition at %d: %v\n%s", p.Start, err, out)
				}
			}
		}
	}
	imagecheck.Fsck(t, fs)
}

// fsckVfatAt checks the FAT filesystem at start: fsck.vfat takes no
// offset, so it reads a sparse copy of the partition.
func fsckVfatAt(t *testing.T, img string, start, size int64) ([]byte, error) {
	part := filepath.Join(t.TempDir(), "part.img")
	if out, err := exec.Command("dd", "if="+img, "of="+part, "bs=1M", fmt.Sprintf("skip=%d", start>>20),
		fmt.Sprintf("count=%d", size>>20), "status=none", "conv=sparse").CombinedOutput(); err != nil {
		return out, err
	}
	out, err := exec.Command("fsck.vfat", "-n", part).CombinedOutput()
	if err == nil && strings.Contains(strings.ToLower(string(out)), "differences") {
		err = fmt.Errorf("boot sector and its backup differ")
	}
	return out, err
}

// touch_efi_vars: the installer VM runs under OVMF with a writable copy of
// its variables, and the boot entry bootctl registers is in efi-vars.fd.
func TestAccInstallTouchEFIVars(t *testing.T) {
	system := fixtures.Build(t, "system-efi")[0]
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "install_efivars", template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "efi"
  touch_efi_vars       = true
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, out)))
	res.MustSucceed(t)
	if got := dirEntries(t, out); strings.Join(got, " ") != "efi-vars.fd nixos.img" {
		t.Fatalf("output directory holds %v, want efi-vars.fd and nixos.img", got)
	}
	vars, err := os.ReadFile(filepath.Join(out, "efi-vars.fd"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(vars, utf16le("Linux Boot Manager")) {
		t.Error("efi-vars.fd holds no boot entry \"Linux Boot Manager\"")
	}
	checkFilesystems(t, filepath.Join(out, "nixos.img"), "efi")
}

func utf16le(s string) []byte {
	var b []byte
	for _, r := range s {
		b = append(b, byte(r), byte(r>>8))
	}
	return b
}

// nix_file: the system is built with nix-build first, then installed.
func TestAccInstallFromNixFile(t *testing.T) {
	fixtures.Build(t, "system-bios") // its parts, so nix-build only assembles
	dir := t.TempDir()
	file := filepath.Join(dir, "system.nix")
	expr := fmt.Sprintf("{ config.system.build.toplevel = import %s/nix/system.nix { }; }\n", fixtures.Dir())
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	res := runPacker(t, "install_nix_file", template("inst", fmt.Sprintf(`
  nix_file             = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, file, out)))
	res.MustSucceed(t)
	if !strings.Contains(res.Log, "Building the system "+file+" -A config.system.build.toplevel") {
		t.Error("the build did not say it built the system from nix_file")
	}
	checkFilesystems(t, filepath.Join(out, "nixos.img"), "legacy")
}

// QEMU dying mid-install fails the build within seconds, showing the
// installer's last console lines, and leaves no output behind.
func TestAccInstallQEMUDies(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	dir := t.TempDir()
	// A QEMU that is killed 3 s after it starts: the installer is then
	// booting or activating (a whole install takes about 5 s of TCG here).
	wrapper := filepath.Join(dir, "qemu-dies")
	script := "#!/bin/sh\n(sleep 3; kill -9 $$) &\nexec qemu-system-x86_64 \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	start := time.Now()
	res := runPacker(t, "install_qemu_dies", template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  qemu_binary          = %q
  output_directory     = %q`, system, wrapper, out)))
	if res.Exit == 0 {
		t.Fatal("the build succeeded although QEMU was killed")
	}
	if took := time.Since(start); took > 60*time.Second {
		t.Errorf("the build took %s to notice QEMU died", took)
	}
	if !strings.Contains(res.Log, "last console lines") {
		t.Errorf("the error does not show the installer's console:\n%s", tail(res.Log, 3000))
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output directory left behind: %v", err)
	}
}

// deterministic (the default): two installs of the same system give the
// same bytes, the installer VM's writes normalised; a changed input changes
// them.
func TestAccInstallReproducible(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	build := func(name, extra string) string {
		t.Setenv("TMPDIR", t.TempDir())
		out := filepath.Join(t.TempDir(), "out")
		runPacker(t, name, template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q
%s`, system, out, extra))).MustSucceed(t)
		img := filepath.Join(out, "nixos.img")
		checkFilesystems(t, img, "legacy")
		return imagecheck.SHA256File(t, img)
	}
	first := build("install_repro_1", "")
	time.Sleep(1100 * time.Millisecond)
	if second := build("install_repro_2", ""); second != first {
		t.Fatalf("two installs of the same system differ: %s vs %s", first, second)
	}
	// The guest's writeback depends on neither its memory nor the clock
	// (agent's writebackSettings): ext4 placed the guest's new blocks
	// differently with less memory before.
	if mem := build("install_repro_mem", "  mem_size = 128"); mem != first {
		t.Fatalf("an install in a 128 MiB VM differs from one in 256 MiB: %s vs %s", mem, first)
	}
	if other := build("install_repro_epoch", "  source_date_epoch = 1700000000"); other == first {
		t.Error("a different source_date_epoch gave the same image")
	}
}

// installer_kernel and installer_modules: the installer VM boots another
// kernel (the host's) than the one the image will boot.
func TestAccInstallOtherInstallerKernel(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	kernel, modules, err := kmod.HostKernel()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "install_other_kernel", template("inst", fmt.Sprintf(`
  system               = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  installer_kernel     = %q
  installer_modules    = %q
  output_directory     = %q`, system, kernel, modules, out)))
	res.MustSucceed(t)
	if !strings.Contains(res.Log, "Installer kernel: "+kernel) {
		t.Error("the build did not say it booted the installer kernel")
	}
	line := packertest.BootImage(t, filepath.Join(out, "nixos.img"), system, "bios")
	if !strings.Contains(line, "alice=yes") {
		t.Errorf("booted system's report: %s", line)
	}
}

// channel: the nixpkgs source becomes root's nixos channel, registered in
// the image's Nix database, as nixos-install --channel leaves it.
func TestAccInstallChannel(t *testing.T) {
	system := fixtures.Build(t, "system-bios")[0]
	dir := t.TempDir()
	src := filepath.Join(dir, "nixpkgs")
	if err := os.MkdirAll(filepath.Join(src, "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	content := "{ }: \"the test channel\"\n"
	if err := os.WriteFile(filepath.Join(src, "default.nix"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	res := runPacker(t, "install_channel", template("inst", fmt.Sprintf(`
  system               = %q
  channel              = %q
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, src, out)))
	res.MustSucceed(t)
	img := filepath.Join(out, "nixos.img")
	fs := imagecheck.FS{Image: img, Offset: imagecheck.Partitions(t, img)[0].Start}
	link := func(p string) string {
		t.Helper()
		st := imagecheck.Debugfs(t, fs, "stat "+p)
		i := strings.Index(st, "Fast link dest: ")
		if i < 0 {
			t.Fatalf("%s is not a fast symlink:\n%s", p, st)
		}
		return strings.Trim(strings.TrimSpace(strings.SplitN(st[i+len("Fast link dest: "):], "\n", 2)[0]), `"`)
	}
	profiles := "/nix/var/nix/profiles/per-user/root"
	if got := link(profiles + "/channels"); got != "channels-1-link" {
		t.Errorf("channels -> %q", got)
	}
	channel := link(profiles + "/channels-1-link")
	if !strings.HasSuffix(channel, "-nixos-channel") {
		t.Fatalf("channels-1-link -> %q, want a store path named nixos-channel", channel)
	}
	if got := imagecheck.Debugfs(t, fs, "cat "+channel+"/nixos/default.nix"); got != content {
		t.Errorf("the channel's default.nix holds %q, want %q", got, content)
	}
	if got := link("/root/.nix-defexpr/channels"); got != profiles+"/channels" {
		t.Errorf("~root/.nix-defexpr/channels -> %q", got)
	}
	db := filepath.Join(dir, "db.sqlite")
	imagecheck.Debugfs(t, fs, "dump /nix/var/nix/db/db.sqlite "+db)
	n, err := exec.Command("sqlite3", db, "SELECT count(*) FROM ValidPaths WHERE path = '"+channel+"'").Output()
	if err != nil || strings.TrimSpace(string(n)) != "1" {
		t.Errorf("the channel is not registered in the image's Nix database: %q %v", n, err)
	}
}

// flake: the system is built from a flake's nixosConfigurations, as
// `nixos-rebuild --flake` would, then installed.
func TestAccInstallFromFlake(t *testing.T) {
	fixtures.Build(t, "system-bios") // its parts, so nix build only assembles
	dir := filepath.Join(t.TempDir(), "flake")
	if out, err := exec.Command("cp", "-r", filepath.Join(fixtures.Dir(), "nix"), dir).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// Flakes evaluate purely: no builtins.currentSystem, no /lib/modules.
	if out, err := exec.Command("sh", "-c", `sed -i 's/builtins.currentSystem/"x86_64-linux"/' "$0"/*.nix`, dir).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	_, modules, err := kmod.HostKernel()
	if err != nil {
		t.Fatal(err)
	}
	flake := fmt.Sprintf(`{
  outputs = { self }: {
    nixosConfigurations.machine.config.system.build.toplevel =
      import ./system.nix { kernelVersion = %q; };
  };
}
`, filepath.Base(modules))
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "install_flake", template("inst", fmt.Sprintf(`
  flake                = "path:%s#machine"
  partition_table_type = "legacy"
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, dir, out)))
	res.MustSucceed(t)
	if !strings.Contains(res.Log, "Building the system path:"+dir+"#machine") {
		t.Error("the build did not say it built the system from the flake")
	}
	checkFilesystems(t, filepath.Join(out, "nixos.img"), "legacy")
}
