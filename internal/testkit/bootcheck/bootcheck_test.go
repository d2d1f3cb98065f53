package bootcheck

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
)

// fixture is a small tree: a text file, a multi-block binary file in a
// subdirectory, a name with a space and one with a quote.
var fixture = map[string][]byte{
	"hello.txt":         []byte("hello from the host\n"),
	"sub/dir/data.bin":  pseudoRandom(300 << 10),
	"name with space":   []byte("spaced\n"),
	"it's quoted":       []byte("quote\n"),
	"nix/store/.keep":   nil,
	"nix/var/nix/db/db": []byte("not sqlite"),
}

func pseudoRandom(n int) []byte {
	out := make([]byte, 0, n)
	seed := sha256.Sum256([]byte("bootcheck"))
	for len(out) < n {
		seed = sha256.Sum256(seed[:])
		out = append(out, seed[:]...)
	}
	return out[:n]
}

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

func expected() map[string]string {
	m := map[string]string{}
	for name, data := range fixture {
		m[name] = sum(data)
	}
	return m
}

func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM under TCG; skipped with -short")
	}
	imagecheck.RequireTool(t, append(tools, "qemu-system-x86_64", "mkfs.ext4")...)
	if _, err := DefaultKernel(); err != nil {
		t.Skip(err)
	}
	if _, err := findBusybox(); err != nil {
		t.Skip(err)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// mkfs writes the fixture tree into a fresh ext4 image file of 32 MiB.
func mkfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for name, data := range fixture {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "fs.img")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "nix-store", "-d", tree, img, "32M")
	return img
}

// gptImage puts the ext4 image into partition 1 (at 1 MiB) of a GPT disk.
func gptImage(t *testing.T) (img string, offset int64) {
	t.Helper()
	fsImg := mkfs(t)
	img = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(40 << 20); err != nil {
		t.Fatal(err)
	}
	run(t, "sgdisk", "-n", "1:2048:+32M", "-t", "1:8300", "-c", "1:nix-store", img)
	src, err := os.Open(fsImg)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	offset = 2048 * 512
	if _, err := io.Copy(io.NewOffsetWriter(f, offset), src); err != nil {
		t.Fatal(err)
	}
	return img, offset
}

func timedRun(t *testing.T, c Check) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	start := time.Now()
	out, err := Run(ctx, c)
	t.Logf("boot took %v", time.Since(start).Round(time.Millisecond))
	return out, err
}

func TestBareFilesystem(t *testing.T) {
	requireTools(t)
	t.Parallel()
	out, err := timedRun(t, Check{
		Image:    mkfs(t),
		Files:    expected(),
		Commands: []string{"cat hello.txt", "false"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		t.Logf("console:\n%s", out)
	}
	for _, want := range []string{
		"BOOTCHECK-CMD-BEGIN 0\nhello from the host\nBOOTCHECK-CMD-END 0 0\n",
		"BOOTCHECK-CMD-END 1 1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
}

func TestGPTPartition(t *testing.T) {
	requireTools(t, "sgdisk")
	t.Parallel()
	img, offset := gptImage(t)
	t.Run("partition", func(t *testing.T) {
		t.Parallel()
		if _, err := timedRun(t, Check{Image: img, Device: "/dev/vda1", Files: expected()}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("offset", func(t *testing.T) {
		t.Parallel()
		if _, err := timedRun(t, Check{Image: img, Offset: offset, Files: expected()}); err != nil {
			t.Fatal(err)
		}
	})
}

// TestMismatch needs one boot for both failure kinds: a wrong hash and a
// missing file must each be named, a correct file must not.
func TestMismatch(t *testing.T) {
	requireTools(t)
	t.Parallel()
	files := expected()
	files["hello.txt"] = sum([]byte("something else"))
	files["no/such/file"] = sum(nil)
	_, err := timedRun(t, Check{Image: mkfs(t), Files: files})
	if err == nil {
		t.Fatal("check passed with a wrong hash and a missing file")
	}
	msg := strings.SplitN(err.Error(), "\n--- console ---", 2)[0]
	for _, want := range []string{
		"hello.txt: sha256 " + sum(fixture["hello.txt"]) + ", want " + files["hello.txt"],
		"no/such/file: missing",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, "data.bin") {
		t.Errorf("error names a correct file: %s", msg)
	}
}

// TestGuestFailure covers the guest's own failure path: nothing to mount.
func TestGuestFailure(t *testing.T) {
	requireTools(t)
	t.Parallel()
	blank := filepath.Join(t.TempDir(), "blank.img")
	if err := os.WriteFile(blank, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := timedRun(t, Check{Image: blank, Files: expected(), Commands: []string{"echo never"}})
	if err == nil || !strings.Contains(err.Error(), `guest reported "mount /dev/vda"`) {
		t.Fatalf("want a guest mount failure, got %v", err)
	}
	if strings.Contains(out, "BOOTCHECK-FILE") || strings.Contains(out, "never") {
		t.Errorf("guest went on after failing:\n%s", out)
	}
}

// TestTimeout checks that an expired context stops QEMU promptly.
func TestTimeout(t *testing.T) {
	requireTools(t)
	t.Parallel()
	img := mkfs(t)
	k, _ := DefaultKernel()
	// Build the shared initramfs first so the deadline hits a running QEMU.
	if _, err := base(strings.TrimPrefix(filepath.Base(k), "vmlinuz-"), "ext4"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, Check{Image: img, Files: expected()})
	if err == nil || !strings.Contains(err.Error(), "no result after") || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("want a deadline error, got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Run returned %v after starting with a 2 s deadline", d)
	}
}

// bootcheck's own module set resolves (kmod's tests check the order rules).
func TestModuleOrder(t *testing.T) {
	k, err := DefaultKernel()
	if err != nil {
		t.Skip(err)
	}
	db, err := kmod.Load(filepath.Join("/lib/modules", strings.TrimPrefix(filepath.Base(k), "vmlinuz-")))
	if err != nil {
		t.Fatal(err)
	}
	for _, fs := range []string{"ext4", "vfat"} {
		mods, err := db.Order(append(append(append([]string{}, baseModules...), fs), fsModules[fs]...))
		if err != nil {
			t.Fatalf("%s: %v", fs, err)
		}
		if !slices.Contains(mods, fs) && db.Path(fs) != "" {
			t.Errorf("%s is not in its own load order %v", fs, mods)
		}
	}
}

func TestPrepareRejects(t *testing.T) {
	img := filepath.Join(t.TempDir(), "x.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Check{
		{},
		{Image: img, Files: map[string]string{"a": "xyz"}},
		{Image: img, Files: map[string]string{"a\nb": sum(nil)}},
		{Image: img, Device: "vda"},
		{Image: img, Offset: -1},
	} {
		if _, _, err := c.prepare(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
