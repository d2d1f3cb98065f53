package ext4

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	writer "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

const (
	normTime = 1700000500
	testTime = 1700000000 // the writer's own times in normImage
)

// normImage writes a small tree with the writer and returns the image path:
// its output is the normal form the kernel's history is reduced to.
func normImage(t *testing.T) string {
	t.Helper()
	p, f := imagecheck.SparseFile(t, "fs.img", 64<<20)
	uuid := [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	seed := [16]byte{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01}
	w, err := writer.NewWriter(f, 0, writer.Options{Size: 64 << 20, UUID: uuid, HashSeed: seed, Time: testTime, Label: "norm"})
	if err != nil {
		t.Fatal(err)
	}
	d := func(name string) {
		if err := w.Mkdir(writer.Header{Name: name, Mode: 0o755, Mtime: 1600000000}); err != nil {
			t.Fatal(err)
		}
	}
	file := func(name, data string) {
		fw, err := w.Create(writer.Header{Name: name, Mode: 0o644, Mtime: 1600000001, Size: int64(len(data))})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	d("etc")
	file("etc/hostname", "nixos\n")
	file("etc/keep", "unchanged\n")
	d("nix")
	d("nix/store")
	for i := 0; i < 40; i++ {
		file(fmt.Sprintf("nix/store/%02d-pkg", i), strings.Repeat("x", i*100))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// requireMount skips only where the tools are absent or this environment
// cannot loop-mount even a mkfs.ext4 image (imagecheck.RequireKernelMount).
func requireMount(t *testing.T) {
	t.Helper()
	imagecheck.RequireTool(t, "cp")
	imagecheck.RequireKernelMount(t, "rw")
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
}

func copyImage(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy.img")
	run(t, "cp", "--sparse=always", src, dst)
	return dst
}

// mountRW loop-mounts img read-write; the returned func unmounts. The
// kernel refusing img fails the test (imagecheck.MountExt4).
func mountRW(t *testing.T, img string) (string, func()) {
	t.Helper()
	return imagecheck.MountExt4(t, img, "rw")
}

// kernelOps is a fixed, single-threaded sequence like an installer's:
// new files and directories, rewrites, renames, deletions, a directory
// large enough to become an htree, a file big enough for stream
// allocation, a long symlink.
//
// ext4 allocates delayed blocks at writeback, from a per-CPU preallocation
// pool for small files: writeback by the flusher threads (on whatever CPU)
// placed small files differently from run to run. So the sequence runs on
// one thread pinned to one CPU and fsyncs every file it writes, which makes
// the allocation happen there, in program order.
func kernelOps(t *testing.T, dir string) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		var cpus unix.CPUSet
		if err := unix.SchedGetaffinity(0, &cpus); err != nil {
			errc <- err
			return
		}
		first := 0
		for !cpus.IsSet(first) {
			first++
		}
		cpus.Zero()
		cpus.Set(first)
		if err := unix.SchedSetaffinity(0, &cpus); err != nil {
			errc <- err
			return
		}
		errc <- kernelSequence(dir)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
}

func writeSynced(name string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func kernelSequence(dir string) (err error) {
	must := func(e error) {
		if e != nil && err == nil {
			err = e
		}
	}
	must(writeSynced(filepath.Join(dir, "etc/hostname"), []byte("installed\n"), 0o644))
	must(os.MkdirAll(filepath.Join(dir, "boot/loader/entries"), 0o755))
	must(writeSynced(filepath.Join(dir, "boot/loader/entries/nixos.conf"), []byte("title NixOS\n"), 0o644))
	must(writeSynced(filepath.Join(dir, "boot/kernel"), bytes.Repeat([]byte("k"), 3<<20), 0o644))
	must(os.Mkdir(filepath.Join(dir, "var"), 0o755))
	for i := 0; i < 300; i++ {
		must(writeSynced(filepath.Join(dir, "var", fmt.Sprintf("state-file-with-a-long-name-%04d", i)), []byte{byte(i)}, 0o600))
	}
	must(writeSynced(filepath.Join(dir, "etc/tmp"), []byte("temp"), 0o644))
	must(os.Rename(filepath.Join(dir, "etc/tmp"), filepath.Join(dir, "etc/machine-id")))
	must(writeSynced(filepath.Join(dir, "etc/gone"), []byte("deleted"), 0o644))
	must(os.Remove(filepath.Join(dir, "etc/gone")))
	must(os.Remove(filepath.Join(dir, "nix/store/05-pkg")))
	must(os.Symlink("/nix/store/"+strings.Repeat("s", 100), filepath.Join(dir, "etc/long-link")))
	must(os.Chmod(filepath.Join(dir, "etc/keep"), 0o600))
	return err
}

func normalizeFile(t *testing.T, img string, o NormalizeOptions) NormalizeReport {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := Normalize(f, 0, sizeOf(t, f), o)
	if err != nil {
		t.Fatalf("Normalize %s: %v", img, err)
	}
	return rep
}

// diffBlocks names the first 4 KiB blocks where two images differ, to show
// what a failed determinism check is about.
func diffBlocks(t *testing.T, a, b string) string {
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := 0; i < len(x) && len(out) < 20; i += ext4spec.BlockSize {
		if !bytes.Equal(x[i:i+ext4spec.BlockSize], y[i:i+ext4spec.BlockSize]) {
			j := 0
			for x[i+j] == y[i+j] {
				j++
			}
			out = append(out, fmt.Sprintf("block %d (first byte +%#x)", i/ext4spec.BlockSize, j))
		}
	}
	return strings.Join(out, ", ")
}

func TestNormalizeKernelWrittenImagesIdentical(t *testing.T) {
	requireMount(t)
	base := normImage(t)
	var imgs []string
	for i := 0; i < 2; i++ {
		if i > 0 {
			time.Sleep(1100 * time.Millisecond) // different wall clock for the second run
		}
		img := copyImage(t, base)
		dir, umount := mountRW(t, img)
		kernelOps(t, dir)
		umount()
		imgs = append(imgs, img)
	}
	if imagecheck.SHA256File(t, imgs[0]) == imagecheck.SHA256File(t, imgs[1]) {
		t.Log("images identical even before Normalize")
	}
	for i, img := range imgs {
		rep := normalizeFile(t, img, NormalizeOptions{Time: normTime})
		t.Logf("image %d: %+v", i, rep)
		if rep.GenerationsZeroed == 0 || rep.TimesChanged == 0 || !rep.JournalCleared || rep.BlocksResealed == 0 {
			t.Errorf("image %d: expected kernel history to be normalised: %+v", i, rep)
		}
		imagecheck.Fsck(t, imagecheck.FS{Image: img})
	}
	if a, b := imagecheck.SHA256File(t, imgs[0]), imagecheck.SHA256File(t, imgs[1]); a != b {
		// NORM_KEEP=dir keeps both images for comparing with debugfs.
		if keep := os.Getenv("NORM_KEEP"); keep != "" {
			run(t, "cp", "--sparse=always", imgs[0], filepath.Join(keep, "a.img"))
			run(t, "cp", "--sparse=always", imgs[1], filepath.Join(keep, "b.img"))
		}
		t.Fatalf("normalised images differ: %s", diffBlocks(t, imgs[0], imgs[1]))
	}

	// The normalised times and generation are what debugfs reads.
	timeRe := regexp.MustCompile(`(?m)^\s*(ctime|atime|mtime|crtime): 0x([0-9a-f]+):([0-9a-f]+)`)
	for _, p := range []string{"/etc/hostname", "/boot/loader/entries/nixos.conf", "/var", "/etc/keep", "/"} {
		out := imagecheck.Debugfs(t, imagecheck.FS{Image: imgs[0]}, "stat "+p)
		ms := timeRe.FindAllStringSubmatch(out, -1)
		if len(ms) != 4 {
			t.Fatalf("stat %s: %d time lines\n%s", p, len(ms), out)
		}
		for _, m := range ms {
			sec, _ := strconv.ParseUint(m[2], 16, 32)
			if sec != normTime || m[3] != "00000000" {
				t.Errorf("stat %s: %s = 0x%s:%s, want %#x:00000000", p, m[1], m[2], m[3], normTime)
			}
		}
		if !regexp.MustCompile(`Generation: 0\s`).MatchString(out) {
			t.Errorf("stat %s: generation not 0\n%s", p, out)
		}
	}
	// An empty journal at sequence 1, exactly as the writer leaves it.
	if got, want := imagecheck.Debugfs(t, imagecheck.FS{Image: imgs[0]}, "logdump"), imagecheck.Debugfs(t, imagecheck.FS{Image: base}, "logdump"); got != want {
		t.Errorf("journal: logdump %q, writer's %q", got, want)
	}

	// Idempotent: nothing left to change.
	sum := imagecheck.SHA256File(t, imgs[0])
	rep := normalizeFile(t, imgs[0], NormalizeOptions{Time: normTime})
	if rep.TimesChanged != 0 || rep.GenerationsZeroed != 0 || rep.VersionsZeroed != 0 || rep.BlocksResealed != 0 ||
		rep.FreeInodesCleared != 0 || rep.JournalCleared || len(rep.SuperblockFields) != 0 {
		t.Errorf("second Normalize changed something: %+v", rep)
	}
	if imagecheck.SHA256File(t, imgs[0]) != sum {
		t.Error("second Normalize changed bytes")
	}

	// The normalised image mounts, and stays consistent after more use.
	dir, umount := mountRW(t, imgs[0])
	if b, err := os.ReadFile(filepath.Join(dir, "etc/hostname")); err != nil || string(b) != "installed\n" {
		t.Errorf("etc/hostname after Normalize: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "var/state-file-with-a-long-name-0007"), []byte("again"), 0o600); err != nil {
		t.Error(err)
	}
	umount()
	imagecheck.Fsck(t, imagecheck.FS{Image: imgs[0]})
}

// A writer image is already normal: clamping to a later time changes nothing.
func TestNormalizeWriterImageUnchanged(t *testing.T) {
	img := normImage(t)
	sum := imagecheck.SHA256File(t, img)
	rep := normalizeFile(t, img, NormalizeOptions{Time: testTime + 1000, Clamp: true})
	if rep.Inodes == 0 || rep.TimesChanged != 0 || rep.GenerationsZeroed != 0 || rep.JournalCleared ||
		len(rep.SuperblockFields) != 0 || rep.FreeInodesCleared != 0 {
		t.Errorf("report on a writer image: %+v", rep)
	}
	if imagecheck.SHA256File(t, img) != sum {
		t.Error("Normalize changed a writer image")
	}
}

func TestNormalizeClampAndSet(t *testing.T) {
	img := normImage(t)
	// Root and lost+found carry testTime, files 1600000001: clamping to a
	// time in between lowers only the former.
	rep := normalizeFile(t, img, NormalizeOptions{Time: 1650000000, Clamp: true})
	if rep.TimesChanged != 4 { // inodes 1, 2 (root), 8 (journal), 11 (lost+found)
		t.Errorf("clamp report: %+v", rep)
	}
	out := imagecheck.Debugfs(t, imagecheck.FS{Image: img}, "stat /")
	if !strings.Contains(out, fmt.Sprintf("mtime: %#x:00000000", 1650000000)) {
		t.Errorf("root mtime not clamped:\n%s", out)
	}
	out = imagecheck.Debugfs(t, imagecheck.FS{Image: img}, "stat /etc/hostname")
	if !strings.Contains(out, fmt.Sprintf("mtime: %#x:00000000", 1600000001)) {
		t.Errorf("file mtime changed by clamp:\n%s", out)
	}
	imagecheck.Fsck(t, imagecheck.FS{Image: img})
	rep = normalizeFile(t, img, NormalizeOptions{Time: normTime})
	if rep.TimesChanged != rep.Inodes {
		t.Errorf("set mode: %d of %d inodes changed", rep.TimesChanged, rep.Inodes)
	}
	imagecheck.Fsck(t, imagecheck.FS{Image: img})
}

func TestNormalizeRefusesMountedCopy(t *testing.T) {
	requireMount(t)
	img := copyImage(t, normImage(t))
	dir, umount := mountRW(t, img)
	if err := os.WriteFile(filepath.Join(dir, "etc/hostname"), []byte("busy\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "sync")
	snap := copyImage(t, img)
	umount()
	sum := imagecheck.SHA256File(t, snap)
	f, err := os.OpenFile(snap, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Normalize(f, 0, sizeOf(t, f), NormalizeOptions{Time: normTime})
	if err == nil || !strings.Contains(err.Error(), "not cleanly unmounted") {
		t.Fatalf("Normalize of a mounted snapshot: %v", err)
	}
	t.Log(err)
	if imagecheck.SHA256File(t, snap) != sum {
		t.Error("refused Normalize wrote to the image")
	}
}

func TestNormalizeRefusesOthers(t *testing.T) {
	p, f := imagecheck.SparseFile(t, "fs.img", 4<<20)
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	_, err := Normalize(f, 0, sizeOf(t, f), NormalizeOptions{Time: normTime})
	if err == nil || !strings.Contains(err.Error(), "not an ext2/3/4 filesystem") {
		t.Errorf("Normalize of garbage %s: %v", p, err)
	}

	// A valid superblock without metadata_csum (as an ext4 not made by
	// this package might have).
	img := normImage(t)
	g, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	sb := make([]byte, 1024)
	if _, err := g.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	ro := binary.LittleEndian.Uint32(sb[0x64:])
	binary.LittleEndian.PutUint32(sb[0x64:], ro&^ext4spec.RoCompatMetaCsum)
	if _, err := g.WriteAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	_, err = Normalize(g, 0, sizeOf(t, g), NormalizeOptions{Time: normTime})
	if err == nil || !strings.Contains(err.Error(), "metadata_csum") {
		t.Errorf("Normalize without metadata_csum: %v", err)
	}
}

// sizeOf is f's size: a bare filesystem owns its whole file.
func sizeOf(t testing.TB, f *os.File) int64 {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
