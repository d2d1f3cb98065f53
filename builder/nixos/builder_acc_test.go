package nixos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/bootcheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// GPT partition type GUIDs, as sfdisk prints them.
const (
	typeBIOSBoot = "21686148-6449-6E6F-744E-656564454649"
	typeESP      = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	typeXBootLdr = "BC13C2FF-59E6-4262-A352-B275FD6F7172"
	typeLinux    = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

// Every layout, through real packer: the partition table has make-disk-image's
// partitions, the filesystem passes e2fsck and matches the store file for
// file, the registration loads into a fresh store and verifies, and the
// Debian kernel mounts the root partition and reads a file.
func TestAccStoreOnlyLayouts(t *testing.T) {
	roots := fixtures.Build(t, "small")
	closure := closureOf(t, roots)
	layouts := []struct {
		layout string
		types  []string // partition types in table order; the last is the root
		mbr    []string // with hybrid_mbr: the MBR's types
	}{
		{"none", nil, nil},
		{"legacy", []string{"83"}, nil},
		{"legacy+gpt", []string{typeBIOSBoot, typeLinux}, nil},
		{"efi", []string{typeESP, typeLinux}, nil},
		{"efixbootldr", []string{typeESP, typeXBootLdr, typeLinux}, nil},
		{"hybrid", []string{typeESP, typeBIOSBoot, typeLinux}, nil},
		{"hybrid", []string{typeESP, typeBIOSBoot, typeLinux}, []string{"ee", "ef", "83"}},
	}
	for _, l := range layouts {
		name := "layout_" + strings.NewReplacer("+", "_").Replace(l.layout)
		if l.mbr != nil {
			name += "_mbr"
		}
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			res := runPacker(t, name, template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = %s
  partition_table_type = %q
  hybrid_mbr           = %v
  additional_space     = "16M"
  output_directory     = %q`, hclList(roots), l.layout, l.mbr != nil, out)))
			res.MustSucceed(t)
			if got := dirEntries(t, out); len(got) != 1 || got[0] != "nixos.img" {
				t.Fatalf("output directory holds %v, want only nixos.img", got)
			}
			img := filepath.Join(out, "nixos.img")

			fs := imagecheck.FS{Image: img}
			fsSize := fileSize(t, img)
			device := "/dev/vda"
			if l.types != nil {
				parts := imagecheck.Partitions(t, img)
				if len(parts) != len(l.types) {
					t.Fatalf("%d partitions, want %d: %+v", len(parts), len(l.types), parts)
				}
				for i, p := range parts {
					if !strings.EqualFold(p.Type, l.types[i]) {
						t.Errorf("partition %d has type %s, want %s", i+1, p.Type, l.types[i])
					}
				}
				root := parts[len(parts)-1]
				if l.layout != "legacy" && !strings.EqualFold(root.UUID, DefaultRootGUID) {
					t.Errorf("root partition GUID %s, want %s", root.UUID, DefaultRootGUID)
				}
				fs.Offset, fsSize = root.Start, root.Size
				if l.mbr != nil {
					out, err := exec.Command("sfdisk", "-d", "-Y", "dos", img).CombinedOutput()
					if err != nil {
						t.Fatalf("sfdisk -Y dos: %v\n%s", err, out)
					}
					for _, typ := range l.mbr {
						if !strings.Contains(string(out), "type="+typ) {
							t.Errorf("the hybrid MBR lacks a partition of type %s:\n%s", typ, out)
						}
					}
				}
				device = fmt.Sprintf("/dev/vda%d", len(parts))
			}

			imagecheck.Fsck(t, fs)
			sb := dumpe2fs(t, fs)
			for _, want := range []string{"Filesystem volume name:   nix-store", "Filesystem UUID:          f222513b-ded1-49fa-b591-20ce86a2fe7f"} {
				if !strings.Contains(sb, want) {
					t.Errorf("superblock lacks %q:\n%s", want, sb)
				}
			}
			dir := imagecheck.Extract(t, fs)
			imagecheck.CompareTree(t, fs, dir, closure)
			imagecheck.VerifyRegistration(t, dir, closure)
			file := firstRegularFile(t, roots[0])
			imagecheck.ReadWithDiskfs(t, fs, fsSize, []string{file})

			rel := path.Join(path.Base(roots[0]), strings.TrimPrefix(file, roots[0]+"/"))
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			if console, err := bootcheck.Run(ctx, bootcheck.Check{
				Image:  img,
				Device: device,
				Files:  map[string]string{rel: imagecheck.SHA256File(t, file)},
			}); err != nil {
				t.Fatalf("the kernel could not read the image: %v\n%s", err, tail(console, 3000))
			}
		})
	}
}

// Big closures: a 20k-entry directory (htree), 100+ store paths at the root,
// and a sparse file over 4 GiB, read back by e2fsck, debugfs and go-diskfs.
func TestAccStoreOnlyBigClosure(t *testing.T) {
	roots := append(fixtures.Build(t, "many"), fixtures.Build(t, "big")...)
	closure := closureOf(t, roots)
	out := filepath.Join(t.TempDir(), "out")
	res := runPacker(t, "big_closure", template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = %s
  partition_table_type = "efi"
  additional_space     = "0"
  output_directory     = %q`, hclList(roots), out)))
	res.MustSucceed(t)
	img := filepath.Join(out, "nixos.img")
	parts := imagecheck.Partitions(t, img)
	root := parts[len(parts)-1]
	fs := imagecheck.FS{Image: img, Offset: root.Start}
	imagecheck.Fsck(t, fs)
	dir := imagecheck.Extract(t, fs)
	imagecheck.CompareTree(t, fs, dir, closure)
	imagecheck.VerifyRegistration(t, dir, closure)
	// go-diskfs cannot read files with holes: the dense ones of each path.
	var dense []string
	for _, r := range roots {
		if f := firstRegularFile(t, r); fileSize(t, f) < 1<<30 {
			dense = append(dense, f)
		}
	}
	imagecheck.ReadWithDiskfs(t, fs, root.Size, dense)

	// The image stays sparse: the 4.5 GiB file's holes are not allocated.
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if a := allocated(fi); a > fi.Size()/2 {
		t.Errorf("image allocates %d of %d bytes; holes were written", a, fi.Size())
	}
}

// The same inputs give the same bytes, whatever TMPDIR and the clock say;
// a changed input changes them.
func TestAccReproducible(t *testing.T) {
	roots := fixtures.Build(t, "small")
	build := func(name, extra string) string {
		t.Setenv("TMPDIR", t.TempDir())
		out := filepath.Join(t.TempDir(), "out")
		runPacker(t, name, template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = %s
  partition_table_type = "efi"
  additional_space     = "8M"
  output_directory     = %q
%s`, hclList(roots), out, extra))).MustSucceed(t)
		return imagecheck.SHA256File(t, filepath.Join(out, "nixos.img"))
	}
	first := build("repro_1", "")
	time.Sleep(1100 * time.Millisecond) // a different second on the clock
	if second := build("repro_2", ""); second != first {
		t.Fatalf("two builds of the same inputs differ: %s vs %s", first, second)
	}
	if other := build("repro_epoch", "  source_date_epoch = 1700000000"); other == first {
		t.Error("a different source_date_epoch gave the same image")
	}
	if other := build("repro_uuid", `  root_fs_uuid = "0b3f6e1c-1111-4222-8333-444455556666"`); other == first {
		t.Error("a different root_fs_uuid gave the same image")
	}
	more := append(roots, fixtures.Build(t, "tiny64")...)
	t.Setenv("TMPDIR", t.TempDir())
	out := filepath.Join(t.TempDir(), "out")
	runPacker(t, "repro_input", template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = %s
  partition_table_type = "efi"
  additional_space     = "8M"
  output_directory     = %q`, hclList(more), out))).MustSucceed(t)
	if imagecheck.SHA256File(t, filepath.Join(out, "nixos.img")) == first {
		t.Error("a different closure gave the same image")
	}
}

// format goes through the nixos-convert code (qemu-img, then the
// container header normalised): every format's image is valid, its guest
// view equals the raw image, and two builds are byte-identical.
func TestAccFormats(t *testing.T) {
	roots := fixtures.Build(t, "small")
	build := func(name, format, compression string) string {
		out := filepath.Join(t.TempDir(), "out")
		runPacker(t, name, template("store", fmt.Sprintf(`
  only_nix_store       = true
  store_paths          = %s
  partition_table_type = "legacy+gpt"
  additional_space     = "8M"
  format               = %q
  compression          = %q
  output_directory     = %q`, hclList(roots), format, compression, out))).MustSucceed(t)
		return out
	}
	raw := filepath.Join(build("fmt_raw", "raw", ""), "nixos.img")
	for _, c := range []struct{ format, compression, file, qemu string }{
		{"qcow2", "", "nixos.qcow2", "qcow2"},
		{"qcow2-compressed", "zstd", "nixos.qcow2", "qcow2"},
		{"vdi", "", "nixos.vdi", "vdi"},
		{"vpc", "", "nixos.vhd", "vpc"},
		{"vhdx", "", "nixos.vhdx", "vhdx"},
		{"vmdk", "", "nixos.vmdk", "vmdk"},
	} {
		t.Run(c.format, func(t *testing.T) {
			out1 := build("fmt_"+c.format+"_1", c.format, c.compression)
			out2 := build("fmt_"+c.format+"_2", c.format, c.compression)
			if got := dirEntries(t, out1); len(got) != 1 || got[0] != c.file {
				t.Fatalf("output directory holds %v, want only %s", got, c.file)
			}
			img := filepath.Join(out1, c.file)
			checks := [][]string{{"compare", "-f", "raw", "-F", c.qemu, raw, img}}
			if c.qemu != "vpc" {
				checks = append(checks, []string{"check", "-f", c.qemu, img})
			}
			for _, args := range checks {
				if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
					t.Errorf("qemu-img %v: %v\n%s", args, err, out)
				}
			}
			if imagecheck.SHA256File(t, img) != imagecheck.SHA256File(t, filepath.Join(out2, c.file)) {
				t.Error("two builds of the same inputs differ")
			}
		})
	}
}

func dumpe2fs(t *testing.T, fs imagecheck.FS) string {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", fmt.Sprintf("%s?offset=%d", fs.Image, fs.Offset)).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	return string(out)
}
