package packertest

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

// BootMarker starts the line the test systems' init prints once booted
// (internal/testkit/fixtures/nix/system/init.sh).
const BootMarker = "NIXOS-FIXTURE-BOOTED "

// BootImage boots img (a snapshot: the image is not changed) through
// firmware ("bios": SeaBIOS, "efi": OVMF with fresh variables, "efi:<file>":
// OVMF with a copy of the variable store file, such as the efi-vars.fd
// touch_efi_vars keeps, "kernel": the system's own kernel and initrd given
// to QEMU) and returns the booted system's report.
func BootImage(t *testing.T, img, system, firmware string) string {
	t.Helper()
	return BootImageMem(t, img, system, firmware, 256)
}

// BootImageMem is BootImage with memMiB of memory: Debian's GRUB EFI runs
// out of memory loading a kernel at 256 MiB.
func BootImageMem(t *testing.T, img, system, firmware string, memMiB int) string {
	t.Helper()
	cfg := qemu.VMConfig{
		Accel:   qemu.TCG,
		MemMiB:  memMiB,
		Disks:   []qemu.Disk{{Path: img, Format: "raw", Snapshot: true}},
		WorkDir: t.TempDir(),
	}
	fw, varsFile, _ := strings.Cut(firmware, ":")
	switch fw {
	case "efi":
		code, vars, err := qemu.FindOVMF()
		if err != nil {
			t.Fatal(err)
		}
		if varsFile != "" {
			vars = varsFile
		}
		copyVars := filepath.Join(t.TempDir(), "vars.fd")
		if err := qemu.CopyVars(vars, copyVars); err != nil {
			t.Fatal(err)
		}
		cfg.EFI = &qemu.EFI{Code: code, Vars: copyVars}
	case "kernel":
		cfg.Kernel = filepath.Join(system, "kernel")
		cfg.Initrd = filepath.Join(system, "initrd")
		params := mustRead(t, filepath.Join(system, "kernel-params"))
		cfg.Append = "init=" + system + "/init " + strings.TrimSpace(params)
	}
	pr, pw := io.Pipe()
	cfg.Console = pw
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := qemu.New().Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	go func() { vm.Wait(); pw.Close() }()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if i := strings.Index(line, BootMarker); i >= 0 {
			go io.Copy(io.Discard, pr)
			return line[i:]
		}
	}
	t.Fatalf("the image did not boot to its marker (%s):\n%s", firmware, strings.Join(vm.ConsoleTail(40), "\n"))
	return ""
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
