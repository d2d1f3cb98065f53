package qemu

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestOVMF(t *testing.T) {
	t.Parallel()
	code, tmpl, err := FindOVMF()
	if err != nil {
		t.Skip(err)
	}
	t.Logf("OVMF: %s + %s", code, tmpl)
	dir := t.TempDir()
	vars := filepath.Join(dir, "efi-vars.fd")
	if err := CopyVars(tmpl, vars); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.raw")
	if err := os.Truncate(mustCreate(t, disk), 64<<20); err != nil {
		t.Fatal(err)
	}
	codeSum, tmplSum := fileSum(t, code), fileSum(t, tmpl)

	var console syncBuffer
	c := VMConfig{Accel: TCG, EFI: &EFI{Code: code, Vars: vars}, Disks: []Disk{{Path: disk}},
		Console: &console, WorkDir: dir}
	v, err := New().Start(ctxTimeout(t, 2*time.Minute), c)
	if err != nil {
		t.Fatal(err)
	}
	took := waitConsole(t, v, &console, "BdsDxe", 60*time.Second)
	t.Logf("OVMF reached BdsDxe in %s", took.Round(time.Millisecond))

	// How QEMU opened the flash files proves the wiring: code read-only,
	// vars read-write.
	for path, want := range map[string]int{code: unix.O_RDONLY, vars: unix.O_RDWR} {
		if got, ok := openMode(v.PID(), path); !ok || got != want {
			t.Errorf("%s opened with access mode %d (found %v), want %d", path, got, ok, want)
		}
	}
	// Let the shell come up (OVMF has written its boot options by then).
	waitConsole(t, v, &console, "Shell>", 60*time.Second)
	if err := v.Quit(); err != nil {
		t.Error(err)
	}
	assertGone(t, v)
	if fileSum(t, vars) == tmplSum {
		t.Error("OVMF did not write its vars copy")
	}
	if fileSum(t, code) != codeSum || fileSum(t, tmpl) != tmplSum {
		t.Error("OVMF code or vars template changed")
	}
	if tail := v.ConsoleTail(5); len(tail) == 0 || strings.Contains(strings.Join(tail, ""), "\x1b") {
		t.Errorf("console tail %q", tail)
	}
}

func mustCreate(t *testing.T, path string) string {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

func fileSum(t *testing.T, path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// openMode finds the fd of pid that has path open and returns its access mode.
func openMode(pid int, path string) (int, bool) {
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, _ := os.ReadDir(fdDir)
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(fdDir, e.Name())); err != nil || target != path {
			continue
		}
		info, err := os.ReadFile(filepath.Join(filepath.Dir(fdDir), "fdinfo", e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if f, ok := strings.CutPrefix(line, "flags:"); ok {
				var flags int
				for _, ch := range strings.TrimSpace(f) { // octal
					flags = flags*8 + int(ch-'0')
				}
				return flags & unix.O_ACCMODE, true
			}
		}
	}
	return 0, false
}

func TestFindOVMFPair(t *testing.T) {
	code, vars, err := FindOVMF()
	if err != nil {
		t.Skip(err)
	}
	if !strings.HasSuffix(code, "OVMF_CODE_4M.fd") || !strings.HasSuffix(vars, "OVMF_VARS_4M.fd") {
		t.Errorf("FindOVMF = %s, %s; want Debian's 4M pair", code, vars)
	}
	if err := CopyVars("/nonexistent", filepath.Join(t.TempDir(), "x")); err == nil {
		t.Error("CopyVars of a missing file succeeded")
	}
}
