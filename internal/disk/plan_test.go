package disk_test

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/disktest"
)

type wantPart struct {
	role        disk.Role
	name        string
	first, last int64 // sectors, inclusive
	typeGUID    string
	mbrType     byte
}

// The expected tables for the default bootSize (256M) and disktest.RootSize.
// They come from make-disk-image.nix's partitionDiskScript, run through
// parted 3.5 (TestMatchesParted reruns them when parted is installed):
//
//	legacy:      mklabel msdos; mkpart primary ext4 1MiB 100%
//	legacy+gpt:  mklabel gpt; mkpart no-fs 1MB 2MB; set 1 bios_grub on;
//	             mkpart primary ext4 2MB 100%
//	efi:         mklabel gpt; mkpart ESP fat32 8MiB $bootSizeMiB; set 1 boot on;
//	             mkpart primary ext4 $bootSizeMiB 100%
//	efixbootldr: mklabel gpt; mkpart ESP fat32 8MiB 100MiB; set 1 boot on;
//	             mkpart BOOT fat32 100MiB $bootSizeMiB; set 2 bls_boot on;
//	             mkpart ROOT ext4 $bootSizeMiB 100%
//	hybrid:      mklabel gpt; mkpart ESP fat32 8MiB $bootSizeMiB; set 1 boot on;
//	             mkpart no-fs 0 1024KiB; set 2 bios_grub on;
//	             mkpart primary ext4 $bootSizeMiB 100%
//
// with bootSizeMiB = round_to_nearest(256M, 1MiB) = 257MiB. Root ends on the
// last MiB boundary before the backup GPT (GPT) or at the disk end (MBR).
var wantLayouts = map[disk.Type]struct {
	diskMiB int64
	parts   []wantPart
}{
	disk.Legacy: {301, []wantPart{
		{disk.RoleRoot, "", 2048, 301*2048 - 1, "", 0x83}}},
	disk.LegacyGPT: {303, []wantPart{
		{disk.RoleBIOSBoot, "no-fs", 2048, 4095, disk.TypeBIOSBoot, 0xef},
		{disk.RoleRoot, "primary", 4096, 302*2048 - 1, disk.TypeLinuxData, 0x83}}},
	disk.EFI: {558, []wantPart{
		{disk.RoleESP, "ESP", 16384, 526335, disk.TypeESP, 0xef},
		{disk.RoleRoot, "primary", 526336, 557*2048 - 1, disk.TypeLinuxData, 0x83}}},
	disk.EFIXBootLdr: {558, []wantPart{
		{disk.RoleESP, "ESP", 16384, 204799, disk.TypeESP, 0xef},
		{disk.RoleXBootLdr, "BOOT", 204800, 526335, disk.TypeXBootLdr, 0xea},
		{disk.RoleRoot, "ROOT", 526336, 557*2048 - 1, disk.TypeLinuxData, 0x83}}},
	disk.Hybrid: {558, []wantPart{
		{disk.RoleESP, "ESP", 16384, 526335, disk.TypeESP, 0xef},
		{disk.RoleBIOSBoot, "no-fs", 34, 2048, disk.TypeBIOSBoot, 0xef},
		{disk.RoleRoot, "primary", 526336, 557*2048 - 1, disk.TypeLinuxData, 0x83}}},
	disk.None: {300, nil},
}

func TestPlanTable(t *testing.T) {
	for _, typ := range disk.Types {
		want := wantLayouts[typ]
		l := disktest.PlanDefault(t, typ)
		if l.DiskSize != want.diskMiB*disk.MiB {
			t.Errorf("%s: disk size %d, want %d MiB", typ, l.DiskSize, want.diskMiB)
		}
		if len(l.Partitions) != len(want.parts) {
			t.Fatalf("%s: %d partitions, want %d", typ, len(l.Partitions), len(want.parts))
		}
		for i, w := range want.parts {
			p := l.Partitions[i]
			if p.Role != w.role || p.Name != w.name || p.FirstLBA() != w.first || p.LastLBA() != w.last ||
				p.TypeGUID != w.typeGUID || p.MBRType != w.mbrType || p.Attributes != 0 || p.Bootable {
				t.Errorf("%s partition %d: got %+v, want %+v", typ, i+1, p, w)
			}
		}
		root := l.Root()
		if root.Size < disktest.RootSize {
			t.Errorf("%s: root partition %d bytes < root size %d", typ, root.Size, disktest.RootSize)
		}
		if typ == disk.None && (root.Start != 0 || root.Size != l.DiskSize) {
			t.Errorf("none: root %+v, want the whole disk", root)
		}
		if typ.IsGPT() {
			if r, _ := l.Find(disk.RoleRoot); r.GUID != disk.DefaultRootGUID {
				t.Errorf("%s: root GUID %s, want make-disk-image's default", typ, r.GUID)
			}
		}
	}
}

func TestDeterminism(t *testing.T) {
	read := func(path string) []byte {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, _ := f.Stat()
		// Everything we write is in the first 34 and last 33 sectors.
		b := make([]byte, 2*34*disk.SectorSize)
		if _, err := f.ReadAt(b[:34*disk.SectorSize], 0); err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(b[34*disk.SectorSize:], st.Size()-34*disk.SectorSize); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, typ := range disk.Types {
		o := disk.Options{Type: typ, RootSize: disktest.RootSize, Seed: []byte("seed-a")}
		a, _ := disk.Plan(o)
		b, _ := disk.Plan(o)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("%s: two plans differ", typ)
		}
		if typ != disk.None && !bytes.Equal(read(disktest.WriteImage(t, a)), read(disktest.WriteImage(t, b))) {
			t.Errorf("%s: two writes differ", typ)
		}
		o.Seed = []byte("seed-b")
		c, _ := disk.Plan(o)
		if typ != disk.None && c.MBRSignature == a.MBRSignature {
			t.Errorf("%s: MBR signature does not depend on the seed", typ)
		}
		if typ.IsGPT() && c.DiskGUID == a.DiskGUID {
			t.Errorf("%s: disk GUID does not depend on the seed", typ)
		}
		seen := map[string]bool{}
		for i, p := range c.Partitions {
			if p.Role != disk.RoleRoot && p.GUID == a.Partitions[i].GUID {
				t.Errorf("%s: %s GUID does not depend on the seed", typ, p.Role)
			}
			if p.Role != disk.RoleRoot && typ.IsGPT() {
				checkRFC4122(t, p.GUID)
			}
			if seen[p.GUID] && p.GUID != "" {
				t.Errorf("%s: GUID %s repeated", typ, p.GUID)
			}
			seen[p.GUID] = true
		}
		if typ.IsGPT() {
			checkRFC4122(t, c.DiskGUID)
		}
	}
}

var reGUID = regexp.MustCompile(`^[0-9A-F]{8}-[0-9A-F]{4}-5[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$`)

func checkRFC4122(t *testing.T, g string) {
	t.Helper()
	if !reGUID.MatchString(g) {
		t.Errorf("%q is not an RFC 4122 version 5 GUID", g)
	}
}

func TestOptions(t *testing.T) {
	// An explicit disk GUID and root GUID are used as given (upper-cased).
	l, err := disk.Plan(disk.Options{Type: disk.EFI, RootSize: disktest.RootSize, DiskGUID: "0123abcd-0000-4000-8000-00000000000a", RootGUID: "0123abcd-0000-4000-8000-00000000000b"})
	if err != nil {
		t.Fatal(err)
	}
	if l.DiskGUID != "0123ABCD-0000-4000-8000-00000000000A" || l.Root().GUID != "0123ABCD-0000-4000-8000-00000000000B" {
		t.Errorf("GUIDs not taken: %+v", l)
	}
	// XBootLdrSize sizes the XBOOTLDR; the root follows it.
	l, err = disk.Plan(disk.Options{Type: disk.EFIXBootLdr, RootSize: disktest.RootSize, XBootLdrSize: 500*disk.MiB + 512})
	if err != nil {
		t.Fatal(err)
	}
	if x, _ := l.Find(disk.RoleXBootLdr); x.Start != 100*disk.MiB || x.Size != 501*disk.MiB || l.Root().Start != 601*disk.MiB {
		t.Errorf("XBOOTLDR %+v root %+v", x, l.Root())
	}
	if disk.DefaultXBootLdrSize != 157*disk.MiB {
		t.Errorf("DefaultXBootLdrSize %d", disk.DefaultXBootLdrSize)
	}
	// Auto size is the smallest; a fixed disk of exactly that size gives
	// the same layout, the minimum works and one sector less does not.
	for _, typ := range disk.Types {
		a, _ := disk.Plan(disk.Options{Type: typ, RootSize: disktest.RootSize})
		f, err := disk.Plan(disk.Options{Type: typ, RootSize: disktest.RootSize, DiskSize: a.DiskSize})
		if err != nil || fmt.Sprint(a) != fmt.Sprint(f) {
			t.Errorf("%s: fixed size %d gives %v, %v", typ, a.DiskSize, f, err)
		}
		minDisk := a.Root().Start + 300*disk.MiB
		if typ.IsGPT() {
			minDisk += 33 * disk.SectorSize
		}
		if typ == disk.None {
			minDisk = disktest.RootSize
		}
		if _, err := disk.Plan(disk.Options{Type: typ, RootSize: disktest.RootSize, DiskSize: minDisk}); err != nil {
			t.Errorf("%s: minimum disk %d refused: %v", typ, minDisk, err)
		}
		_, err = disk.Plan(disk.Options{Type: typ, RootSize: disktest.RootSize, DiskSize: minDisk - disk.SectorSize})
		if err == nil || !strings.Contains(err.Error(), strconv.FormatInt(minDisk, 10)) {
			t.Errorf("%s: too small disk: %v, want the needed size %d", typ, err, minDisk)
		}
	}
}

func TestErrors(t *testing.T) {
	ok := disk.Options{Type: disk.EFI, RootSize: disktest.RootSize}
	cases := []struct {
		name string
		mod  func(*disk.Options)
		want []string
	}{
		{"unknown type", func(o *disk.Options) { o.Type = "gpt" }, []string{`"gpt"`, `"legacy", "legacy+gpt", "efi", "efixbootldr", "hybrid", "none"`}},
		{"empty type", func(o *disk.Options) { o.Type = "" }, []string{`""`, `"hybrid"`}},
		{"zero root", func(o *disk.Options) { o.RootSize = 0 }, []string{"root size 0", "positive"}},
		{"odd root", func(o *disk.Options) { o.RootSize = 1000 }, []string{"root size 1000", "512"}},
		{"odd disk", func(o *disk.Options) { o.DiskSize = 1<<30 + 1 }, []string{"disk size 1073741825", "512"}},
		{"negative boot", func(o *disk.Options) { o.BootSize = -512 }, []string{"boot size -512"}},
		{"small boot", func(o *disk.Options) { o.BootSize = 4 * disk.MiB }, []string{"boot size 4194304", "8388608"}},
		{"small xb boot", func(o *disk.Options) { o.Type = disk.EFIXBootLdr; o.BootSize = 64 * disk.MiB }, []string{"boot size 67108864", "104857600"}},
		{"boot on legacy", func(o *disk.Options) { o.Type = disk.Legacy; o.BootSize = disk.DefaultBootSize }, []string{"legacy", "efi, efixbootldr and hybrid"}},
		{"xbootldr on efi", func(o *disk.Options) { o.XBootLdrSize = disk.MiB }, []string{"XBOOTLDR size", "only to efixbootldr"}},
		{"both boot sizes", func(o *disk.Options) {
			o.Type = disk.EFIXBootLdr
			o.BootSize = 200 * disk.MiB
			o.XBootLdrSize = disk.MiB
		}, []string{"both", "only one"}},
		{"hybrid MBR on efi", func(o *disk.Options) { o.HybridMBR = true }, []string{"hybrid MBR", "efi"}},
		{"bad disk GUID", func(o *disk.Options) { o.DiskGUID = "97FD5997-D90B-4AA3-8D16-C1723AEA73C" }, []string{"disk GUID", `"97FD5997-D90B-4AA3-8D16-C1723AEA73C"`, "8-4-4-4-12"}},
		{"bad root GUID", func(o *disk.Options) { o.RootGUID = "F222513B_DED1-49FA-B591-20CE86A2FE7F" }, []string{"root partition GUID", "F222513B_DED1"}},
		{"non-hex GUID", func(o *disk.Options) { o.RootGUID = "G222513B-DED1-49FA-B591-20CE86A2FE7F" }, []string{"G222513B"}},
		{"nil GUID", func(o *disk.Options) { o.RootGUID = "00000000-0000-0000-0000-000000000000" }, []string{"nil GUID"}},
		{"bad root GUID on legacy", func(o *disk.Options) { o.Type = disk.Legacy; o.RootGUID = "nope" }, []string{`"nope"`}},
		{"disk GUID on legacy", func(o *disk.Options) { o.Type = disk.Legacy; o.DiskGUID = disk.DefaultRootGUID }, []string{"disk GUID", "no GPT"}},
		{"duplicate GUID", func(o *disk.Options) { o.DiskGUID = disk.DefaultRootGUID }, []string{disk.DefaultRootGUID, "unique"}},
		{"too small", func(o *disk.Options) { o.DiskSize = 100 * disk.MiB }, []string{"104857600", "too small", strconv.FormatInt(257*disk.MiB+300*disk.MiB+33*512, 10)}},
	}
	for _, c := range cases {
		o := ok
		c.mod(&o)
		_, err := disk.Plan(o)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", c.name, err, w)
			}
		}
	}
	if _, err := disk.ParseType("EFI"); err == nil {
		t.Error("ParseType is case-insensitive; nixpkgs is not")
	}
	for _, typ := range disk.Types {
		if got, err := disk.ParseType(string(typ)); err != nil || got != typ {
			t.Errorf("ParseType(%q) = %q, %v", typ, got, err)
		}
	}
}
