package normalize

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

func sh(t *testing.T, script string) {
	t.Helper()
	if out, err := exec.Command("sh", "-ec", script).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

const (
	espStart  = 1 << 20
	espSize   = 64 << 20
	rootStart = espStart + espSize
	rootSize  = 64 << 20
	oldStart  = rootStart + rootSize
	oldSize   = 8 << 20
)

// foreignDisk makes a GPT image made by the usual tools: an ESP (mkfs.vfat), an
// ext4 root as mkfs.ext4 makes it today, and an ext4 with 1 KiB blocks.
func foreignDisk(t *testing.T, dir string) string {
	img := filepath.Join(dir, "disk.img")
	sh(t, fmt.Sprintf(`
truncate -s %[1]d %[2]s
sgdisk -o -n1:%[3]d:+%[4]dK -t1:ef00 -n2:%[5]d:+%[6]dK -t2:8300 -n3:%[7]d:+%[8]dK -t3:8300 %[2]s >/dev/null
mkfs.vfat -F 32 --offset %[3]d -n ESP %[2]s %[4]d >/dev/null
mkfs.ext4 -q -F -b 4096 -E offset=%[9]d %[2]s %[6]dk
mkfs.ext4 -q -F -b 1024 -O ^metadata_csum -E offset=%[10]d %[2]s %[8]dk
`, oldStart+oldSize+(1<<20), img, espStart/512, espSize/1024, rootStart/512, rootSize/1024, oldStart/512, oldSize/1024, rootStart, oldStart))
	return img
}

// change does to a copy what a system's life does: new random GPT GUIDs
// (sgdisk -G), a file written into each filesystem with the clock's time.
func change(t *testing.T, img, tag string) {
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("same content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, fmt.Sprintf(`
sgdisk -G %[1]s >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -i %[1]s@@%[2]d %[3]s ::/loader.conf
debugfs -w -R "write %[3]s /etc-file" "%[1]s?offset=%[4]d" >/dev/null 2>&1
`, img, espStart, src, rootStart))
	_ = tag
}

// Two copies of a disk that lived different lives become byte-identical,
// checked by sgdisk, e2fsck and fsck.vfat; what cannot be normalised is
// named, and a second run changes nothing.
func TestImage(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "mkfs.vfat", "mkfs.ext4", "mcopy", "debugfs", "e2fsck", "fsck.vfat")
	a := foreignDisk(t, t.TempDir())
	b := filepath.Join(t.TempDir(), "disk.img")
	sh(t, "cp --sparse=always "+a+" "+b)
	change(t, a, "a")
	time.Sleep(2100 * time.Millisecond) // FAT times have 2 s resolution
	change(t, b, "b")
	if imagecheck.SHA256File(t, a) == imagecheck.SHA256File(t, b) {
		t.Fatal("the copies are identical before normalising: the test proves nothing")
	}
	// sgdisk -G gave each copy random GUIDs: only re-derived (from a seed
	// of the normalised content, no seed being given) do they agree.
	o := Options{Time: 1700000000, RederiveIDs: true}
	la, err := Image(context.Background(), a, o)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := Image(context.Background(), b, o)
	if err != nil {
		t.Fatal(err)
	}
	report := strings.Join(la, "\n")
	t.Log(report)
	for _, want := range []string{
		"partition table (gpt): ", "disk GUID", "partition 2 GUID",
		"partition 1 (FAT32): ", "partition 2 (ext4): ", "UUID and hash seed kept",
		"left alone: partition 3 (ext4): ",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if imagecheck.SHA256File(t, a) != imagecheck.SHA256File(t, b) {
		t.Errorf("normalised copies differ:\n%s\n---\n%s", report, strings.Join(lb, "\n"))
	}
	sh(t, fmt.Sprintf(`
sgdisk -v %[1]s | grep -q 'No problems found'
e2fsck -fn "%[1]s?offset=%[2]d" >/dev/null
dd if=%[1]s of=%[1]s.esp bs=1M skip=%[3]d count=%[4]d status=none
fsck.vfat -n %[1]s.esp >/dev/null
`, a, rootStart, espStart>>20, espSize>>20))

	before := imagecheck.SHA256File(t, a)
	again, err := Image(context.Background(), a, o)
	if err != nil {
		t.Fatal(err)
	}
	if imagecheck.SHA256File(t, a) != before {
		t.Errorf("a second run changed the image:\n%s", strings.Join(again, "\n"))
	}
}

// A container image gets its header normalised, and says its filesystems
// were not.
func TestImageContainer(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw")
	sh(t, "truncate -s 16M "+raw+" && echo data | dd of="+raw+" bs=1 seek=1048576 conv=notrunc status=none")
	vdi := filepath.Join(dir, "disk.vdi")
	sh(t, "qemu-img convert -f raw -O vdi "+raw+" "+vdi)
	lines, err := Image(context.Background(), vdi, Options{Seed: []byte("x"), Time: 1})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{"vdi container: ", "vdi image UUID", "left alone: the filesystems inside a vdi image"} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
}

func TestEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	if e, err := Epoch(nil); err != nil || e != 1 {
		t.Errorf("default: %d, %v", e, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1234")
	if e, err := Epoch(nil); err != nil || e != 1234 {
		t.Errorf("from the environment: %d, %v", e, err)
	}
	k := int64(99)
	if e, err := Epoch(&k); err != nil || e != 99 {
		t.Errorf("key over environment: %d, %v", e, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "soon")
	if _, err := Epoch(nil); err == nil || !strings.Contains(err.Error(), `SOURCE_DATE_EPOCH environment variable "soon"`) {
		t.Errorf("bad environment: %v", err)
	}
}

// ContentSeed tells images apart by their data, holes skipped.
func TestContentSeed(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	sh(t, "truncate -s 1G "+a+" && echo one | dd of="+a+" bs=1 seek=5000000 conv=notrunc status=none && cp --sparse=always "+a+" "+b)
	sa, err := ContentSeed(a, []byte("base"))
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := ContentSeed(b, []byte("base"))
	if string(sa) != string(sb) {
		t.Error("equal files gave different seeds")
	}
	sh(t, "echo two | dd of="+b+" bs=1 seek=5000000 conv=notrunc status=none")
	if sb, _ = ContentSeed(b, []byte("base")); string(sa) == string(sb) {
		t.Error("different data gave the same seed")
	}
	if sc, _ := ContentSeed(a, []byte("other")); string(sa) == string(sc) {
		t.Error("a different base gave the same seed")
	}

	// The same bytes stored otherwise (zeros written out, 64 MiB of them
	// around the data, as a copy without --sparse leaves them) give the
	// same seed: it depends on the content alone, not on the host's
	// allocation. The first ContentSeed hashed allocated extents as they
	// lay, so copies of one image got different UUIDs.
	c := filepath.Join(dir, "c")
	sh(t, "truncate -s 1G "+c+" && dd if=/dev/zero of="+c+" bs=1M count=64 conv=notrunc status=none && echo one | dd of="+c+" bs=1 seek=5000000 conv=notrunc status=none")
	if sc, _ := ContentSeed(c, []byte("base")); string(sa) != string(sc) {
		t.Error("the same bytes with zeros allocated gave another seed")
	}
}

// An installed root from another builder: /etc/shadow in activation's
// order, a machine-id, a Nix database stamped with the build time. Two of
// them, made at different times with different machine-ids, come out the
// same, still sound, with the files settled.
func TestImageInstalledRoot(t *testing.T) {
	imagecheck.RequireTool(t, "mkfs.ext4", "debugfs", "e2fsck", "sqlite3")
	const uuid = "3f6b2a4e-8c1d-4f0e-9a57-2d7c1b9e0f11"
	var imgs [2]string
	for i := range imgs {
		root := t.TempDir()
		imgs[i] = filepath.Join(t.TempDir(), "root.img")
		sh(t, fmt.Sprintf(`
cd %[1]s
mkdir -p etc nix/var/nix/db
printf 'root:!:1::::::\nalice:!:1::::::\nbob:!:1::::::\n' > etc/shadow
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > etc/machine-id; echo >> etc/machine-id
sqlite3 nix/var/nix/db/db.sqlite "CREATE TABLE ValidPaths (id integer primary key autoincrement not null, path text unique not null, hash text not null, registrationTime integer not null, deriver text, narSize integer);
INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES ('/nix/store/aaa-a', 'sha256:0', $(date +%%s), 1), ('/nix/store/bbb-b', 'sha256:1', $(date +%%s), 2);"
truncate -s 64M %[2]s
mkfs.ext4 -q -F -b 4096 -U %[3]s -E hash_seed=%[3]s -d %[1]s %[2]s
`, root, imgs[i], uuid))
		if i == 0 {
			time.Sleep(1100 * time.Millisecond)
		}
	}
	if imagecheck.SHA256File(t, imgs[0]) == imagecheck.SHA256File(t, imgs[1]) {
		t.Fatal("the two roots are identical before normalising: the test proves nothing")
	}
	o := Options{Seed: []byte("test"), Time: 1700000000}
	var report string
	for _, img := range imgs {
		lines, err := Image(context.Background(), img, o)
		if err != nil {
			t.Fatal(err)
		}
		report = strings.Join(lines, "\n")
	}
	t.Log(report)
	for _, want := range []string{"/etc/shadow sorted", "/nix/var/nix/db/db.sqlite registrationTime", "/etc/machine-id removed"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if a, b := imagecheck.SHA256File(t, imgs[0]), imagecheck.SHA256File(t, imgs[1]); a != b {
		t.Errorf("normalised roots differ: %s vs %s", a, b)
	}
	fs := imagecheck.FS{Image: imgs[0]}
	imagecheck.Fsck(t, fs)
	if got := imagecheck.Debugfs(t, fs, "cat /etc/shadow"); got != "alice:!:1::::::\nbob:!:1::::::\nroot:!:1::::::\n" {
		t.Errorf("/etc/shadow: %q", got)
	}
	if got := imagecheck.Debugfs(t, fs, "ls /etc"); strings.Contains(got, "machine-id") {
		t.Errorf("/etc still lists machine-id: %s", got)
	}
	db := filepath.Join(t.TempDir(), "db.sqlite")
	imagecheck.Debugfs(t, fs, "dump /nix/var/nix/db/db.sqlite "+db)
	out, err := exec.Command("sqlite3", db, "SELECT DISTINCT registrationTime FROM ValidPaths; PRAGMA integrity_check;").CombinedOutput()
	if err != nil || string(out) != "1700000000\nok\n" {
		t.Errorf("the database after normalising: %v\n%s", err, out)
	}
}
