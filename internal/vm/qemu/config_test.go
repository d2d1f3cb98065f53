package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestVersion(t *testing.T) {
	v, err := New().Version(ctxTimeout(t, 10*time.Second), "")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^\d+\.\d+`).MatchString(v) {
		t.Errorf("version %q", v)
	}
	t.Logf("QEMU %s", v)
}

func TestMissingBinary(t *testing.T) {
	_, err := New().Version(context.Background(), "qemu-does-not-exist")
	if err == nil || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "qemu-does-not-exist not found") {
		t.Errorf("Version: %v", err)
	}
	_, err = New().Start(context.Background(), VMConfig{Binary: "qemu-does-not-exist", Accel: TCG})
	if err == nil || !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "qemu-does-not-exist") {
		t.Errorf("Start: %v", err)
	}
	if _, err := New().Version(context.Background(), ""); err == nil {
		t.Log("default binary present, as expected")
	}
}

func TestBadArgument(t *testing.T) {
	t.Parallel()
	for _, extra := range [][]string{
		{"-bogus-flag"},                   // exits before QMP exists
		{"-device", "no-such-device-xyz"}, // exits during machine setup
	} {
		c := VMConfig{Accel: TCG, WorkDir: t.TempDir(), ExtraArgs: extra}
		start := time.Now()
		v, err := New().Start(ctxTimeout(t, time.Minute), c)
		if err == nil {
			err = v.Wait()
		}
		var ee *ExitError
		if !errors.As(err, &ee) || !strings.Contains(err.Error(), extra[len(extra)-1]) || ee.State == nil || ee.State.ExitCode() == 0 {
			t.Errorf("%v: %v", extra, err)
		}
		t.Logf("%v failed in %s: %v", extra, time.Since(start).Round(time.Millisecond), err)
		assertEmptyDir(t, c.WorkDir)
	}
}

func TestConfigErrors(t *testing.T) {
	code, vars, err := FindOVMF()
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	cases := []struct {
		c    VMConfig
		want string
		key  string
	}{
		{VMConfig{Accel: TCG, EFI: &EFI{Code: "/nonexistent/CODE.fd", Vars: vars}}, "/nonexistent/CODE.fd", "efi_firmware_code"},
		{VMConfig{Accel: TCG, EFI: &EFI{Code: code, Vars: filepath.Join(dir, "missing.fd")}}, "missing.fd", "efi_firmware_vars"},
		{VMConfig{Accel: TCG, EFI: &EFI{Code: code, Vars: "/usr/share/OVMF/OVMF_VARS.fd"}}, "same OVMF build", "efi_firmware_vars"},
		{VMConfig{Accel: TCG, Kernel: "/nonexistent/vmlinuz"}, "kernel file /nonexistent/vmlinuz", ""},
		{VMConfig{Accel: TCG, Disks: []Disk{{Path: "/nonexistent/disk.raw"}}}, "disk file /nonexistent/disk.raw", ""},
		{VMConfig{Accel: "hvf"}, "unknown accelerator", ""},
		{VMConfig{Accel: TCG, AgentSocket: "/" + strings.Repeat("x", 120)}, "at most 107", ""},
	}
	for _, tc := range cases {
		_, err := New().Start(context.Background(), tc.c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want %q, got %v", tc.want, err)
			continue
		}
		var fe *FileError
		if tc.key != "" && (!errors.As(err, &fe) || fe.Key != tc.key) {
			t.Errorf("%v: key %+v, want %s", err, fe, tc.key)
		}
	}
}

// A TMPDIR too long for a unix socket falls back to /tmp; a short one is
// used as it is.
func TestSocketDirLongTMPDIR(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 90))
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", long)
	dir, err := SocketDir("packer-nixos-vm-", "agent.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if filepath.Dir(dir) != "/tmp" {
		t.Errorf("SocketDir with a %d-byte TMPDIR = %s, want a directory in /tmp", len(long), dir)
	}
	if n := len(filepath.Join(dir, "agent.sock")); n > maxSocketPath {
		t.Errorf("socket path %d bytes > %d", n, maxSocketPath)
	}
	short := t.TempDir()
	t.Setenv("TMPDIR", short)
	dir2, err := SocketDir("packer-nixos-vm-", "agent.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir2)
	if filepath.Dir(dir2) != short {
		t.Errorf("SocketDir with a short TMPDIR = %s, want it in %s", dir2, short)
	}
	if fi, err := os.Stat(dir2); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode: %v %v", fi.Mode(), err)
	}
}

// An aarch64 guest gets the virt board, the TCG CPU model that boots
// fastest and its own emulator; KVM is refused unless the host is arm64.
func TestArchArgs(t *testing.T) {
	c := VMConfig{Arch: AArch64, Accel: TCG, MemMiB: 256, CPUs: 1}
	a := strings.Join(c.args("/q.sock"), " ")
	for _, want := range []string{"-machine virt ", "-cpu max,pauth-impdef=on ", "-accel tcg "} {
		if !strings.Contains(a, want) {
			t.Errorf("aarch64 args lack %q: %s", want, a)
		}
	}
	x := VMConfig{Accel: TCG, MemMiB: 256, CPUs: 1}
	if a := strings.Join(x.args("/q.sock"), " "); !strings.Contains(a, "-machine pc ") || !strings.Contains(a, "-cpu max ") {
		t.Errorf("the zero Arch is not the PC: %s", a)
	}
	x.EFI = &EFI{Code: "/c", Vars: "/v"}
	if a := strings.Join(x.args("/q.sock"), " "); !strings.Contains(a, "-machine q35 ") {
		t.Errorf("x86_64 with EFI is not q35: %s", a)
	}
	if runtime.GOARCH != "arm64" {
		k := VMConfig{Arch: AArch64, Accel: KVM, Binary: "/bin/true"}
		if err := k.normalize(); err == nil || !strings.Contains(err.Error(), "KVM runs only guests of the host's architecture") {
			t.Errorf("KVM for an aarch64 guest on %s: %v", runtime.GOARCH, err)
		}
		if p, err := ProbeAccel(context.Background(), nil, VMConfig{Arch: AArch64}, nil, time.Second); err != nil || p.Accel != TCG {
			t.Errorf("ProbeAccel for an aarch64 guest: %+v %v, want TCG at once", p, err)
		}
	}
}
