package reproducible

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/killtest"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/diskartifact"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

func sh(t *testing.T, script string) {
	t.Helper()
	if out, err := exec.Command("sh", "-ec", script).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

// foreign makes a GPT disk as the usual tools do, then lives a little:
// an ESP (mkfs.vfat) with a file copied in, an ext4 root (mkfs.ext4) with
// a file written by debugfs at the clock's time.
func foreign(t *testing.T, dir string) string {
	t.Helper()
	img := filepath.Join(dir, "disk.img")
	src := filepath.Join(dir, "f")
	if err := os.WriteFile(src, bytes.Repeat([]byte("content\n"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, fmt.Sprintf(`
truncate -s 200M %[1]s
sgdisk -o -n1:2048:+64M -t1:ef00 -n2:0:0 -t2:8300 %[1]s >/dev/null
mkfs.vfat -F 32 --offset 2048 %[1]s 65536 >/dev/null
mkfs.ext4 -q -F -b 4096 -E offset=68157440 %[1]s 130048k
MTOOLS_SKIP_CHECK=1 mcopy -i %[1]s@@1048576 %[2]s ::/loader.conf
debugfs -w -R "write %[2]s /file" "%[1]s?offset=68157440" >/dev/null 2>&1
rm %[2]s
`, img, src))
	return img
}

func artifact(path string) packersdk.Artifact {
	return &diskartifact.Artifact{ID: "test", Path: path, Format: qemuimg.Format{Qemu: "raw"}}
}

func postProcess(t *testing.T, path string, raws ...map[string]interface{}) []string {
	t.Helper()
	var p PostProcessor
	in := []interface{}{}
	for _, r := range raws {
		in = append(in, r)
	}
	if err := p.Configure(in...); err != nil {
		t.Fatal(err)
	}
	ui := &packersdk.BasicUi{Writer: io.Discard, ErrorWriter: io.Discard}
	if _, _, _, err := p.PostProcess(context.Background(), ui, artifact(path)); err != nil {
		t.Fatal(err)
	}
	return nil
}

// Issue 11, finding 5: with no seed, two different images got the same
// container UUIDs (the seed was the constant "packer-plugin-nixos", the
// VirtualBox clash), while the same image normalised twice must get the
// same bytes. The default seed now derives from the normalised content.
func TestDefaultSeedFollowsContent(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	vdi := func(name, data string) string {
		raw := filepath.Join(dir, name+".raw")
		out := filepath.Join(dir, name+".vdi")
		sh(t, fmt.Sprintf("truncate -s 16M %[1]s && printf %%s %[2]q | dd of=%[1]s bs=1 seek=1048576 conv=notrunc status=none && qemu-img convert -O vdi %[1]s %[3]s", raw, data, out))
		return out
	}
	a1, a2, b := vdi("a1", "one"), vdi("a2", "one"), vdi("b", "two")
	for _, p := range []string{a1, a2, b} {
		postProcess(t, p)
	}
	uuid := func(p string) []byte {
		f, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return f[0x188 : 0x188+16] // VDI header: the image UUID
	}
	if imagecheck.SHA256File(t, a1) != imagecheck.SHA256File(t, a2) {
		t.Error("two conversions of one image differ after normalising with the default seed")
	}
	if bytes.Equal(uuid(a1), uuid(b)) {
		t.Errorf("different images got the same VDI UUID %x with the default seed", uuid(a1))
	}
}

// Issue 11, finding 4, through the post-processor: the partition GUIDs
// the system refers to are kept unless rederive_ids asks otherwise.
func TestKeepsPartitionGUIDs(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "mkfs.vfat", "mkfs.ext4", "mcopy", "debugfs")
	img := foreign(t, t.TempDir())
	guid := func() string {
		out, err := exec.Command("sgdisk", "-i", "2", img).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "Partition unique GUID:") {
				return l
			}
		}
		t.Fatalf("no unique GUID in %s", out)
		return ""
	}
	before := guid()
	postProcess(t, img)
	if got := guid(); got != before {
		t.Errorf("default: %s became %s", before, got)
	}
	postProcess(t, img, map[string]interface{}{"rederive_ids": true})
	if got := guid(); got == before {
		t.Errorf("rederive_ids: the GUID stayed %s", got)
	}
}

// killChild names the image a child test process rewrites, to be killed.
const killChild = "REPRODUCIBLE_TEST_REWRITE"

func TestMain(m *testing.M) {
	if p := os.Getenv(killChild); p != "" {
		_, err := rewrite(context.Background(), p, normalize.Options{Time: 1700000000}, false)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Issue 11, finding 6: a failure or a kill half way left a half-rewritten
// image (the rewrite was in place). Killed with SIGKILL at many points
// through a real normalisation, the image is always either the input or
// the complete output, and nothing is left beside it.
func TestRewriteKilledAtManyPoints(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "mkfs.vfat", "mkfs.ext4", "mcopy", "debugfs")
	src := t.TempDir()
	input := foreign(t, src)
	// 96 MiB of data in the root, so that the copy and the scan take long
	// enough for kills to land all through them.
	sh(t, fmt.Sprintf(`head -c 100663296 /dev/urandom > %[1]s/big
debugfs -w -R "write %[1]s/big /big" "%[2]s?offset=68157440" >/dev/null 2>&1
rm %[1]s/big`, src, input))
	in := imagecheck.SHA256File(t, input)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	fresh := func() {
		os.Remove(img)
		sh(t, fmt.Sprintf("cp --sparse=always %s %s", input, img))
	}
	run := func(delay time.Duration) bool { return killtest.Run(t, killChild+"="+img, delay) }
	// The shortest of three whole runs: a busy machine makes one long,
	// and kill points past the end would test nothing.
	full := time.Hour
	for i := 0; i < 3; i++ {
		fresh()
		start := time.Now()
		run(time.Hour)
		full = min(full, time.Since(start))
	}
	out := imagecheck.SHA256File(t, img)
	if out == in {
		t.Fatal("the rewrite changed nothing: the test proves nothing")
	}
	const points = 24
	kills := 0
	for i := 0; i < points; i++ {
		fresh()
		at := full * time.Duration(i) / points
		if run(at) {
			kills++
		}
		if got := imagecheck.SHA256File(t, img); got != in && got != out {
			t.Fatalf("killed at %v of %v: the image is neither the input nor the output", at, full)
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.Name() != "disk.img" && !strings.HasPrefix(e.Name(), ".disk.img.edit-") {
				t.Fatalf("killed at %v: %s left beside the image", at, e.Name())
			}
		}
	}
	if kills < points/3 {
		t.Errorf("only %d of %d runs were killed (a full run takes %v): the test did not test", kills, points, full)
	}
	t.Logf("%d of %d runs killed through a %v rewrite", kills, points, full)
}

// Cancelled (Packer's Ctrl-C), the rewrite stops and leaves the input.
func TestRewriteCancelled(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "mkfs.vfat", "mkfs.ext4", "mcopy", "debugfs")
	input := foreign(t, t.TempDir())
	in := imagecheck.SHA256File(t, input)
	img := filepath.Join(t.TempDir(), "disk.img")
	stopped := 0
	for _, after := range []time.Duration{0, time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond} {
		os.Remove(img)
		sh(t, fmt.Sprintf("cp --sparse=always %s %s", input, img))
		ctx, cancel := context.WithTimeout(context.Background(), after)
		_, err := rewrite(ctx, img, normalize.Options{Time: 1700000000}, false)
		cancel()
		if err == nil {
			continue // finished first
		}
		stopped++
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("cancelled after %v: %v, want the context's error", after, err)
		}
		if got := imagecheck.SHA256File(t, img); got != in {
			t.Fatalf("cancelled after %v (%v): the input changed", after, err)
		}
	}
	if stopped == 0 {
		t.Error("no rewrite was stopped: the test did not test")
	}
}
