package diskartifact

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// files is an artifact as another builder hands one over: files and state.
type files struct {
	list  []string
	state map[string]interface{}
}

func (f files) BuilderId() string          { return "example.builder" }
func (f files) Files() []string            { return f.list }
func (f files) Id() string                 { return "" }
func (f files) String() string             { return "" }
func (f files) State(k string) interface{} { return f.state[k] }
func (f files) Destroy() error             { return nil }

func TestFind(t *testing.T) {
	dir := t.TempDir()
	raw, qcow, notes := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "b.qcow2"), filepath.Join(dir, "notes.txt")
	for _, p := range []string{raw, notes} {
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A qcow2 by its header, whatever the extension says.
	if err := os.WriteFile(qcow, append([]byte("QFI\xfb"), make([]byte, 4092)...), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		a         files
		path, fmt string
	}{
		{"by extension", files{list: []string{notes, raw}}, raw, "raw"},
		{"by diskName", files{list: []string{raw, qcow}, state: map[string]interface{}{"diskName": "b.qcow2"}}, qcow, "qcow2"},
		{"by diskPaths", files{list: []string{notes}, state: map[string]interface{}{"diskPaths": []interface{}{qcow}}}, qcow, "qcow2"},
		{"diskType wins", files{list: []string{raw}, state: map[string]interface{}{"diskType": "vhd"}}, raw, "vpc"},
	} {
		d, err := Find(c.a)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if d.Path != c.path || d.Format.Qemu != c.fmt {
			t.Errorf("%s: %s (%s), want %s (%s)", c.name, d.Path, d.Format.Qemu, c.path, c.fmt)
		}
	}
	if d, _ := Find(files{list: []string{raw}}); d.State.DomainType != "tcg" {
		t.Errorf("domainType of an artifact without one: %q, want tcg", d.State.DomainType)
	}
	_, err := Find(files{list: []string{notes}})
	if err == nil || !strings.Contains(err.Error(), `the input artifact (BuilderId "example.builder") has no disk image among its files`) {
		t.Errorf("no disk: %v", err)
	}
	_, err = Find(files{list: []string{raw}, state: map[string]interface{}{"diskType": "qed"}})
	if err == nil || !strings.Contains(err.Error(), `is of type "qed"`) {
		t.Errorf("unknown diskType: %v", err)
	}
}

// The state Packer's vagrant, checksum and manifest post-processors read.
func TestArtifactState(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nixos.vhd")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, _ := Find(files{list: []string{p}, state: map[string]interface{}{"diskType": "vpc"}})
	a := &Artifact{ID: "x", Path: p, Format: f.Format, Carry: State{DiskSize: "327M", DomainType: "tcg"}}
	for k, want := range map[string]interface{}{"diskName": "nixos.vhd", "diskType": "vpc", "diskSize": "327M", "domainType": "tcg"} {
		if got := a.State(k); got != want {
			t.Errorf("State(%s) = %v, want %v", k, got, want)
		}
	}
	if err := a.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Error("Destroy of an artifact that does not own its file removed it")
	}
	a.Owned = true
	if err := a.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Error("Destroy left the file it owns")
	}
}
