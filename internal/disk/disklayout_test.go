package disk

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// rootSize is deliberately not a MiB multiple, so the rounding shows.
const rootSize = 300*MiB - 4096

type wantPart struct {
	role        Role
	name        string
	first, last int64 // sectors, inclusive
	typeGUID    string
	mbrType     byte
}

// The expected tables for the default bootSize (256M) and rootSize above.
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
var wantLayouts = map[Type]struct {
	diskMiB int64
	parts   []wantPart
}{
	Legacy: {301, []wantPart{
		{RoleRoot, "", 2048, 301*2048 - 1, "", 0x83}}},
	LegacyGPT: {303, []wantPart{
		{RoleBIOSBoot, "no-fs", 2048, 4095, TypeBIOSBoot, 0xef},
		{RoleRoot, "primary", 4096, 302*2048 - 1, TypeLinuxData, 0x83}}},
	EFI: {558, []wantPart{
		{RoleESP, "ESP", 16384, 526335, TypeESP, 0xef},
		{RoleRoot, "primary", 526336, 557*2048 - 1, TypeLinuxData, 0x83}}},
	EFIXBootLdr: {558, []wantPart{
		{RoleESP, "ESP", 16384, 204799, TypeESP, 0xef},
		{RoleXBootLdr, "BOOT", 204800, 526335, TypeXBootLdr, 0xea},
		{RoleRoot, "ROOT", 526336, 557*2048 - 1, TypeLinuxData, 0x83}}},
	Hybrid: {558, []wantPart{
		{RoleESP, "ESP", 16384, 526335, TypeESP, 0xef},
		{RoleBIOSBoot, "no-fs", 34, 2048, TypeBIOSBoot, 0xef},
		{RoleRoot, "primary", 526336, 557*2048 - 1, TypeLinuxData, 0x83}}},
	None: {300, nil},
}

// partedScript is make-disk-image's partitioning, bootEnd in MiB.
func partedScript(t Type, bootEndMiB int64) []string {
	b := fmt.Sprintf("%dMiB", bootEndMiB)
	switch t {
	case Legacy:
		return []string{"mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "100%"}
	case LegacyGPT:
		return []string{"mklabel", "gpt", "mkpart", "no-fs", "1MB", "2MB", "set", "1", "bios_grub", "on",
			"mkpart", "primary", "ext4", "2MB", "100%"}
	case EFI:
		return []string{"mklabel", "gpt", "mkpart", "ESP", "fat32", "8MiB", b, "set", "1", "boot", "on",
			"mkpart", "primary", "ext4", b, "100%"}
	case EFIXBootLdr:
		return []string{"mklabel", "gpt", "mkpart", "ESP", "fat32", "8MiB", "100MiB", "set", "1", "boot", "on",
			"mkpart", "BOOT", "fat32", "100MiB", b, "set", "2", "bls_boot", "on", "mkpart", "ROOT", "ext4", b, "100%"}
	case Hybrid:
		return []string{"mklabel", "gpt", "mkpart", "ESP", "fat32", "8MiB", b, "set", "1", "boot", "on",
			"mkpart", "no-fs", "0", "1024KiB", "set", "2", "bios_grub", "on", "mkpart", "primary", "ext4", b, "100%"}
	}
	return nil
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// writeImage plans nothing: it sizes a sparse file and writes l into it.
func writeImage(t *testing.T, l *Layout) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := l.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

type sfdiskJSON struct {
	PartitionTable struct {
		Label      string `json:"label"`
		ID         string `json:"id"`
		Partitions []struct {
			Start int64  `json:"start"`
			Size  int64  `json:"size"`
			Type  string `json:"type"`
			UUID  string `json:"uuid"`
			Name  string `json:"name"`
			Boot  bool   `json:"bootable"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

func sfdisk(t *testing.T, args ...string) sfdiskJSON {
	t.Helper()
	var j sfdiskJSON
	// stdout only: sfdisk warns on stderr, e.g. about MBR on a 3 TiB disk.
	cmd := exec.Command("sfdisk", append([]string{"-J"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sfdisk -J %v: %v\n%s", args, err, stderr.String())
	}
	if err := json.Unmarshal(out, &j); err != nil {
		t.Fatalf("sfdisk -J: %v\n%s", err, out)
	}
	return j
}

func planDefault(t *testing.T, typ Type) *Layout {
	t.Helper()
	l, err := Plan(Options{Type: typ, RootSize: rootSize, Seed: []byte("test")})
	if err != nil {
		t.Fatalf("Plan(%s): %v", typ, err)
	}
	return l
}

func TestPlanTable(t *testing.T) {
	for _, typ := range Types {
		want := wantLayouts[typ]
		l := planDefault(t, typ)
		if l.DiskSize != want.diskMiB*MiB {
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
		if root.Size < rootSize {
			t.Errorf("%s: root partition %d bytes < root size %d", typ, root.Size, rootSize)
		}
		if typ == None && (root.Start != 0 || root.Size != l.DiskSize) {
			t.Errorf("none: root %+v, want the whole disk", root)
		}
		if typ.IsGPT() {
			if r, _ := l.Find(RoleRoot); r.GUID != DefaultRootGUID {
				t.Errorf("%s: root GUID %s, want make-disk-image's default", typ, r.GUID)
			}
		}
	}
}

var (
	reField = regexp.MustCompile(`(?m)^(Partition GUID code|Partition unique GUID|First sector|Last sector|Attribute flags|Partition name): (\S+)`)
	reDisk  = regexp.MustCompile(`Disk identifier \(GUID\): (\S+)`)
)

func TestWriteGPT(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	for _, typ := range []Type{LegacyGPT, EFI, EFIXBootLdr, Hybrid} {
		t.Run(typ.String(), func(t *testing.T) {
			l := planDefault(t, typ)
			img := writeImage(t, l)
			if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
				t.Fatalf("sgdisk -v:\n%s", out)
			}
			if m := reDisk.FindStringSubmatch(run(t, "sgdisk", "-p", img)); m == nil || m[1] != l.DiskGUID {
				t.Errorf("sgdisk disk GUID %v, want %s", m, l.DiskGUID)
			}
			for i, p := range l.Partitions {
				got := map[string]string{}
				for _, m := range reField.FindAllStringSubmatch(run(t, "sgdisk", "-i", strconv.Itoa(i+1), img), -1) {
					got[m[1]] = m[2]
				}
				want := map[string]string{
					"Partition GUID code":   p.TypeGUID,
					"Partition unique GUID": p.GUID,
					"First sector":          strconv.FormatInt(p.FirstLBA(), 10),
					"Last sector":           strconv.FormatInt(p.LastLBA(), 10),
					"Attribute flags":       "0000000000000000",
					"Partition name":        "'" + p.Name + "'",
				}
				for k, v := range want {
					if got[k] != v {
						t.Errorf("partition %d %s: sgdisk says %q, want %q", i+1, k, got[k], v)
					}
				}
			}
			// sfdisk: GPT view, then the MBR under it.
			j := sfdisk(t, img)
			if j.PartitionTable.Label != "gpt" || j.PartitionTable.ID != l.DiskGUID || len(j.PartitionTable.Partitions) != len(l.Partitions) {
				t.Fatalf("sfdisk GPT view: %+v", j)
			}
			for i, p := range l.Partitions {
				s := j.PartitionTable.Partitions[i]
				if s.Start != p.FirstLBA() || s.Size != p.Size/SectorSize || s.Type != p.TypeGUID || s.UUID != p.GUID || s.Name != p.Name {
					t.Errorf("sfdisk partition %d: %+v, want %+v", i+1, s, p)
				}
			}
			checkMBR(t, l, img)
			checkDiskfs(t, l, img)
		})
	}
}

// checkMBR compares sector 0 as sfdisk reads it with l.MBR().
func checkMBR(t *testing.T, l *Layout, img string) {
	t.Helper()
	args := []string{img}
	if l.Type.IsGPT() {
		args = []string{"-Y", "dos", img}
	}
	j := sfdisk(t, args...)
	if j.PartitionTable.Label != "dos" || j.PartitionTable.ID != fmt.Sprintf("0x%08x", l.MBRSignature) {
		t.Errorf("sfdisk MBR label %q id %q, want dos 0x%08x", j.PartitionTable.Label, j.PartitionTable.ID, l.MBRSignature)
	}
	want := l.MBR()
	if len(j.PartitionTable.Partitions) != len(want) {
		t.Fatalf("sfdisk MBR: %+v, want %+v", j.PartitionTable.Partitions, want)
	}
	for i, w := range want {
		s := j.PartitionTable.Partitions[i]
		if s.Start != int64(w.StartLBA) || s.Size != int64(w.Sectors) || s.Type != fmt.Sprintf("%x", w.Type) || s.Boot != w.Bootable {
			t.Errorf("MBR entry %d: sfdisk %+v, want %+v", i+1, s, w)
		}
	}
}

// checkDiskfs reads the table back with go-diskfs, an independent reader.
func checkDiskfs(t *testing.T, l *Layout, img string) {
	t.Helper()
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatalf("go-diskfs GetPartitionTable: %v", err)
	}
	switch tab := pt.(type) {
	case *gpt.Table:
		if !l.Type.IsGPT() || !strings.EqualFold(tab.GUID, l.DiskGUID) {
			t.Errorf("go-diskfs GPT GUID %s for %s, want %s", tab.GUID, l.Type, l.DiskGUID)
		}
		if len(tab.Partitions) != len(l.Partitions) {
			t.Fatalf("go-diskfs: %d partitions, want %d", len(tab.Partitions), len(l.Partitions))
		}
		for i, p := range l.Partitions {
			g := tab.Partitions[i]
			if int64(g.Start) != p.FirstLBA() || int64(g.End) != p.LastLBA() || string(g.Type) != p.TypeGUID ||
				g.GUID != p.GUID || g.Name != p.Name || g.Attributes != p.Attributes {
				t.Errorf("go-diskfs partition %d: %+v, want %+v", i+1, g, p)
			}
		}
	case *mbr.Table:
		if l.Type != Legacy || tab.UUID() != fmt.Sprintf("%08x", l.MBRSignature) {
			t.Errorf("go-diskfs MBR for %s, signature %s, want %08x", l.Type, tab.UUID(), l.MBRSignature)
		}
		want := l.MBR()
		for i, p := range tab.Partitions {
			if i < len(want) {
				w := want[i]
				if p.Start != w.StartLBA || p.Size != w.Sectors || byte(p.Type) != w.Type || p.Bootable != w.Bootable {
					t.Errorf("go-diskfs MBR entry %d: %+v, want %+v", i+1, p, w)
				}
			} else if p.Type != mbr.Empty {
				t.Errorf("go-diskfs MBR entry %d not empty: %+v", i+1, p)
			}
		}
	default:
		t.Fatalf("go-diskfs read a %T", pt)
	}
}

func TestWriteLegacy(t *testing.T) {
	imagecheck.RequireTool(t, "sfdisk")
	l := planDefault(t, Legacy)
	img := writeImage(t, l)
	checkMBR(t, l, img)
	checkDiskfs(t, l, img)
	if out := run(t, "sfdisk", "-d", img); !strings.Contains(out, "label: dos") || strings.Contains(out, "gpt") {
		t.Errorf("sfdisk -d:\n%s", out)
	}
}

func TestWriteNone(t *testing.T) {
	l := planDefault(t, None)
	img := writeImage(t, l)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Error("none wrote something")
	}
	if l.MBR() != nil || l.MBRSignature != 0 || l.DiskGUID != "" {
		t.Errorf("none layout has a table: %+v", l)
	}
}

// TestMatchesParted runs make-disk-image's own parted calls on a file of
// the same size and compares every partition, for the default boot size
// and for an odd fixed disk with another boot size.
func TestMatchesParted(t *testing.T) {
	imagecheck.RequireTool(t, "parted", "sfdisk")
	cases := []Options{}
	for _, typ := range []Type{Legacy, LegacyGPT, EFI, EFIXBootLdr, Hybrid} {
		cases = append(cases, Options{Type: typ, RootSize: rootSize})
		o := Options{Type: typ, RootSize: rootSize, DiskSize: 2000*MiB + 7*SectorSize}
		if typ.HasBootSize() {
			o.BootSize = 300*MiB + 4096
		}
		cases = append(cases, o)
	}
	for _, o := range cases {
		l, err := Plan(o)
		if err != nil {
			t.Fatalf("Plan(%+v): %v", o, err)
		}
		bs := o.BootSize
		if bs == 0 {
			bs = DefaultBootSize
		}
		ours := sfdisk(t, writeImage(t, l))
		ref := filepath.Join(t.TempDir(), "parted.img")
		if err := os.WriteFile(ref, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(ref, l.DiskSize); err != nil {
			t.Fatal(err)
		}
		run(t, "parted", append([]string{"--script", ref, "--"}, partedScript(o.Type, bootEnd(bs)/MiB)...)...)
		theirs := sfdisk(t, ref)
		if len(ours.PartitionTable.Partitions) != len(theirs.PartitionTable.Partitions) {
			t.Fatalf("%s: ours %+v, parted %+v", o.Type, ours, theirs)
		}
		for i, p := range theirs.PartitionTable.Partitions {
			q := ours.PartitionTable.Partitions[i]
			p.UUID, q.UUID = "", ""
			if p != q {
				t.Errorf("%s (disk %d, boot %d) partition %d: ours %+v, parted %+v", o.Type, l.DiskSize, o.BootSize, i+1, q, p)
			}
		}
	}
}

// TestHybridMBR compares our hybrid MBR with what sgdisk --hybrid=1:3 makes
// of the same GPT.
func TestHybridMBR(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	plain := planDefault(t, Hybrid)
	ref := writeImage(t, plain)
	run(t, "sgdisk", "--hybrid=1:3", ref)
	l, err := Plan(Options{Type: Hybrid, RootSize: rootSize, Seed: []byte("test"), HybridMBR: true})
	if err != nil {
		t.Fatal(err)
	}
	img := writeImage(t, l)
	if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
	checkMBR(t, l, img)
	checkDiskfs(t, l, img)
	ours, theirs := sfdisk(t, "-Y", "dos", img), sfdisk(t, "-Y", "dos", ref)
	if fmt.Sprint(ours.PartitionTable.Partitions) != fmt.Sprint(theirs.PartitionTable.Partitions) {
		t.Errorf("hybrid MBR\nours   %+v\nsgdisk %+v", ours.PartitionTable.Partitions, theirs.PartitionTable.Partitions)
	}
	if len(l.MBR()) != 3 || l.MBR()[0].Type != 0xee {
		t.Errorf("hybrid MBR entries %+v", l.MBR())
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
		b := make([]byte, 2*34*SectorSize)
		if _, err := f.ReadAt(b[:34*SectorSize], 0); err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(b[34*SectorSize:], st.Size()-34*SectorSize); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, typ := range Types {
		o := Options{Type: typ, RootSize: rootSize, Seed: []byte("seed-a")}
		a, _ := Plan(o)
		b, _ := Plan(o)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("%s: two plans differ", typ)
		}
		if typ != None && !bytes.Equal(read(writeImage(t, a)), read(writeImage(t, b))) {
			t.Errorf("%s: two writes differ", typ)
		}
		o.Seed = []byte("seed-b")
		c, _ := Plan(o)
		if typ != None && c.MBRSignature == a.MBRSignature {
			t.Errorf("%s: MBR signature does not depend on the seed", typ)
		}
		if typ.IsGPT() && c.DiskGUID == a.DiskGUID {
			t.Errorf("%s: disk GUID does not depend on the seed", typ)
		}
		seen := map[string]bool{}
		for i, p := range c.Partitions {
			if p.Role != RoleRoot && p.GUID == a.Partitions[i].GUID {
				t.Errorf("%s: %s GUID does not depend on the seed", typ, p.Role)
			}
			if p.Role != RoleRoot && typ.IsGPT() {
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
	l, err := Plan(Options{Type: EFI, RootSize: rootSize, DiskGUID: "0123abcd-0000-4000-8000-00000000000a", RootGUID: "0123abcd-0000-4000-8000-00000000000b"})
	if err != nil {
		t.Fatal(err)
	}
	if l.DiskGUID != "0123ABCD-0000-4000-8000-00000000000A" || l.Root().GUID != "0123ABCD-0000-4000-8000-00000000000B" {
		t.Errorf("GUIDs not taken: %+v", l)
	}
	// XBootLdrSize sizes the XBOOTLDR; the root follows it.
	l, err = Plan(Options{Type: EFIXBootLdr, RootSize: rootSize, XBootLdrSize: 500*MiB + 512})
	if err != nil {
		t.Fatal(err)
	}
	if x, _ := l.Find(RoleXBootLdr); x.Start != 100*MiB || x.Size != 501*MiB || l.Root().Start != 601*MiB {
		t.Errorf("XBOOTLDR %+v root %+v", x, l.Root())
	}
	if DefaultXBootLdrSize != 157*MiB {
		t.Errorf("DefaultXBootLdrSize %d", DefaultXBootLdrSize)
	}
	// Auto size is the smallest; a fixed disk of exactly that size gives
	// the same layout, the minimum works and one sector less does not.
	for _, typ := range Types {
		a, _ := Plan(Options{Type: typ, RootSize: rootSize})
		f, err := Plan(Options{Type: typ, RootSize: rootSize, DiskSize: a.DiskSize})
		if err != nil || fmt.Sprint(a) != fmt.Sprint(f) {
			t.Errorf("%s: fixed size %d gives %v, %v", typ, a.DiskSize, f, err)
		}
		minDisk := a.Root().Start + 300*MiB
		if typ.IsGPT() {
			minDisk += 33 * SectorSize
		}
		if typ == None {
			minDisk = rootSize
		}
		if _, err := Plan(Options{Type: typ, RootSize: rootSize, DiskSize: minDisk}); err != nil {
			t.Errorf("%s: minimum disk %d refused: %v", typ, minDisk, err)
		}
		_, err = Plan(Options{Type: typ, RootSize: rootSize, DiskSize: minDisk - SectorSize})
		if err == nil || !strings.Contains(err.Error(), strconv.FormatInt(minDisk, 10)) {
			t.Errorf("%s: too small disk: %v, want the needed size %d", typ, err, minDisk)
		}
	}
}

func TestBigDisk(t *testing.T) {
	imagecheck.RequireTool(t, "sgdisk", "sfdisk")
	l, err := Plan(Options{Type: EFI, RootSize: rootSize, DiskSize: 3 << 40})
	if err != nil {
		t.Fatal(err)
	}
	img := writeImage(t, l)
	if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", out)
	}
	if m := l.MBR(); m[0].Sectors != 0xffffffff {
		t.Errorf("protective MBR past 2 TiB: %+v", m)
	}
	checkMBR(t, l, img)
	if _, err := Plan(Options{Type: Legacy, RootSize: rootSize, DiskSize: 3 << 40}); err == nil || !strings.Contains(err.Error(), "2 TiB") {
		t.Errorf("legacy 3 TiB: %v", err)
	}
	if _, err := Plan(Options{Type: Hybrid, HybridMBR: true, RootSize: rootSize, DiskSize: 3 << 40}); err == nil || !strings.Contains(err.Error(), "2 TiB") {
		t.Errorf("hybrid MBR 3 TiB: %v", err)
	}
}

func TestErrors(t *testing.T) {
	ok := Options{Type: EFI, RootSize: rootSize}
	cases := []struct {
		name string
		mod  func(*Options)
		want []string
	}{
		{"unknown type", func(o *Options) { o.Type = "gpt" }, []string{`"gpt"`, `"legacy", "legacy+gpt", "efi", "efixbootldr", "hybrid", "none"`}},
		{"empty type", func(o *Options) { o.Type = "" }, []string{`""`, `"hybrid"`}},
		{"zero root", func(o *Options) { o.RootSize = 0 }, []string{"root size 0", "positive"}},
		{"odd root", func(o *Options) { o.RootSize = 1000 }, []string{"root size 1000", "512"}},
		{"odd disk", func(o *Options) { o.DiskSize = 1<<30 + 1 }, []string{"disk size 1073741825", "512"}},
		{"negative boot", func(o *Options) { o.BootSize = -512 }, []string{"boot size -512"}},
		{"small boot", func(o *Options) { o.BootSize = 4 * MiB }, []string{"boot size 4194304", "8388608"}},
		{"small xb boot", func(o *Options) { o.Type = EFIXBootLdr; o.BootSize = 64 * MiB }, []string{"boot size 67108864", "104857600"}},
		{"boot on legacy", func(o *Options) { o.Type = Legacy; o.BootSize = DefaultBootSize }, []string{"legacy", "efi, efixbootldr and hybrid"}},
		{"xbootldr on efi", func(o *Options) { o.XBootLdrSize = MiB }, []string{"XBOOTLDR size", "only to efixbootldr"}},
		{"both boot sizes", func(o *Options) { o.Type = EFIXBootLdr; o.BootSize = 200 * MiB; o.XBootLdrSize = MiB }, []string{"both", "only one"}},
		{"hybrid MBR on efi", func(o *Options) { o.HybridMBR = true }, []string{"hybrid MBR", "efi"}},
		{"bad disk GUID", func(o *Options) { o.DiskGUID = "97FD5997-D90B-4AA3-8D16-C1723AEA73C" }, []string{"disk GUID", `"97FD5997-D90B-4AA3-8D16-C1723AEA73C"`, "8-4-4-4-12"}},
		{"bad root GUID", func(o *Options) { o.RootGUID = "F222513B_DED1-49FA-B591-20CE86A2FE7F" }, []string{"root partition GUID", "F222513B_DED1"}},
		{"non-hex GUID", func(o *Options) { o.RootGUID = "G222513B-DED1-49FA-B591-20CE86A2FE7F" }, []string{"G222513B"}},
		{"nil GUID", func(o *Options) { o.RootGUID = "00000000-0000-0000-0000-000000000000" }, []string{"nil GUID"}},
		{"bad root GUID on legacy", func(o *Options) { o.Type = Legacy; o.RootGUID = "nope" }, []string{`"nope"`}},
		{"disk GUID on legacy", func(o *Options) { o.Type = Legacy; o.DiskGUID = DefaultRootGUID }, []string{"disk GUID", "no GPT"}},
		{"duplicate GUID", func(o *Options) { o.DiskGUID = DefaultRootGUID }, []string{DefaultRootGUID, "unique"}},
		{"too small", func(o *Options) { o.DiskSize = 100 * MiB }, []string{"104857600", "too small", strconv.FormatInt(257*MiB+300*MiB+33*512, 10)}},
	}
	for _, c := range cases {
		o := ok
		c.mod(&o)
		_, err := Plan(o)
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
	if _, err := ParseType("EFI"); err == nil {
		t.Error("ParseType is case-insensitive; nixpkgs is not")
	}
	for _, typ := range Types {
		if got, err := ParseType(string(typ)); err != nil || got != typ {
			t.Errorf("ParseType(%q) = %q, %v", typ, got, err)
		}
	}
}

func TestWriteWrongSize(t *testing.T) {
	l := planDefault(t, EFI)
	f, err := os.Create(filepath.Join(t.TempDir(), "small.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(l.DiskSize - MiB); err != nil {
		t.Fatal(err)
	}
	if err := l.Write(f); err == nil || !strings.Contains(err.Error(), strconv.FormatInt(l.DiskSize, 10)) {
		t.Errorf("Write into a short file: %v", err)
	}
}
