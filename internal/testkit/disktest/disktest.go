// Package disktest is test support for partition tables: it writes a
// planned internal/disk layout into a sparse image and checks what is there
// with other people's tools (sfdisk, go-diskfs) against the layout. Every
// helper takes a testing.TB and fails it with the tool's output.
//
// internal/disk's own tests are an external test package so that they can
// use it.
package disktest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
)

// RootSize is the root filesystem PlanDefault plans for, deliberately not
// a MiB multiple so that the rounding shows.
const RootSize = 300*disk.MiB - 4096

// Run runs a tool and returns its combined output, failing t if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// WriteImage plans nothing: it sizes a sparse file and writes l into it.
func WriteImage(t testing.TB, l *disk.Layout) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := l.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

// SfdiskJSON is what `sfdisk -J` prints.
type SfdiskJSON struct {
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

// Sfdisk runs `sfdisk -J` with args and decodes its output.
func Sfdisk(t testing.TB, args ...string) SfdiskJSON {
	t.Helper()
	var j SfdiskJSON
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

// PlanDefault plans layout typ for RootSize with the seed "test".
func PlanDefault(t testing.TB, typ disk.Type) *disk.Layout {
	t.Helper()
	l, err := disk.Plan(disk.Options{Type: typ, RootSize: RootSize, Seed: []byte("test")})
	if err != nil {
		t.Fatalf("Plan(%s): %v", typ, err)
	}
	return l
}

// CheckMBR compares sector 0 as sfdisk reads it with l.MBR().
func CheckMBR(t testing.TB, l *disk.Layout, img string) {
	t.Helper()
	args := []string{img}
	if l.Type.IsGPT() {
		args = []string{"-Y", "dos", img}
	}
	j := Sfdisk(t, args...)
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

// CheckDiskfs reads the table back with go-diskfs, an independent reader.
func CheckDiskfs(t testing.TB, l *disk.Layout, img string) {
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
		if l.Type != disk.Legacy || tab.UUID() != fmt.Sprintf("%08x", l.MBRSignature) {
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
