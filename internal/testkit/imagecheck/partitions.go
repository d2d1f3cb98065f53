package imagecheck

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

var sgdiskWarn = regexp.MustCompile(`(?i)caution|warning|error|corrupt|invalid|problem:`)

// alignCaution is sgdisk's note on a partition ending on an odd sector. It is
// no defect: make-disk-image's hybrid layout puts the BIOS boot partition at
// sectors 34..2048 (`mkpart no-fs 0 1024KiB`), and we reproduce that layout.
var alignCaution = regexp.MustCompile(`(?s)Caution: Partition \d+ doesn't end on a 2-sector boundary\. This may\s+result in problems with some disk encryption tools\.`)

// Part is one partition as sfdisk reads it.
type Part struct {
	Node        string // sfdisk's device name: the image path and the partition number
	Start, Size int64  // bytes
	Type        string // GPT type GUID, or the MBR type byte in hex ("83")
	UUID, Name  string // GPT only
	Attrs       string // GPT attribute flags as sfdisk prints them ("" for none)
	Bootable    bool   // MBR active flag
}

// Partitions returns the partition table of image as `sfdisk -J` reads it, or nil when the
// image has none (the "none" layout). A GPT must also pass `sgdisk -v` with no problems.
func Partitions(t testing.TB, image string) []Part {
	t.Helper()
	RequireTool(t, "sfdisk")
	cmd := exec.Command("sfdisk", "-J", image)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		if strings.Contains(e.String(), "does not contain a recognized partition table") {
			return nil
		}
		t.Fatalf("sfdisk -J %s: %v\n%s", image, err, e.String())
	}
	var j struct {
		PartitionTable struct {
			Label      string `json:"label"`
			SectorSize int64  `json:"sectorsize"`
			Partitions []struct {
				Node     string `json:"node"`
				Start    int64  `json:"start"`
				Size     int64  `json:"size"`
				Type     string `json:"type"`
				UUID     string `json:"uuid"`
				Name     string `json:"name"`
				Attrs    string `json:"attrs"`
				Bootable bool   `json:"bootable"`
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(o.Bytes(), &j); err != nil {
		t.Fatalf("sfdisk -J %s: %v\n%s", image, err, o.String())
	}
	pt := j.PartitionTable
	if pt.SectorSize == 0 {
		pt.SectorSize = 512 // sfdisk before 2.38 does not print it
	}
	if pt.Label == "gpt" {
		// Both tools repair a damaged backup GPT in memory and still report success, the
		// damage only showing as warnings: any warning fails.
		if e.Len() > 0 {
			t.Errorf("sfdisk -J %s warns:\n%s", image, e.String())
		}
		RequireTool(t, "sgdisk")
		out, err := exec.Command("sgdisk", "-v", image).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "No problems found") || sgdiskWarn.Match(alignCaution.ReplaceAll(out, nil)) {
			t.Fatalf("sgdisk -v %s: %v\n%s", image, err, out)
		}
	}
	parts := make([]Part, len(pt.Partitions))
	for i, p := range pt.Partitions {
		parts[i] = Part{Node: p.Node, Start: p.Start * pt.SectorSize, Size: p.Size * pt.SectorSize,
			Type: p.Type, UUID: p.UUID, Name: p.Name, Attrs: p.Attrs, Bootable: p.Bootable}
	}
	return parts
}
