package diskartifact

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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
		{"by diskPaths", files{list: []string{raw, qcow}, state: map[string]interface{}{"diskPaths": []interface{}{filepath.Join(dir, "x", "..", "b.qcow2")}}}, qcow, "qcow2"},
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
	if d, _ := Find(files{list: []string{raw}}); d.State.DomainType != "kvm" {
		t.Errorf("domainType of an artifact without one: %q, want kvm", d.State.DomainType)
	}
	_, err := Find(files{list: []string{notes}})
	if err == nil || !strings.Contains(err.Error(), `the input artifact (BuilderId "example.builder") has no disk image among its files`) {
		t.Errorf("no disk: %v", err)
	}
	// Issue 11 (FuzzFind's invariant): the old Find returned diskPaths'
	// first path even when it was none of the artifact's files, and
	// nixos-reproducible rewrites what Find returns.
	_, err = Find(files{list: []string{notes}, state: map[string]interface{}{"diskPaths": []string{qcow}}})
	if err == nil || !strings.Contains(err.Error(), "which is not among its files") {
		t.Errorf("diskPaths outside the files: %v", err)
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

// TestFindNotRegular: the old Find opened a FIFO named like a disk image
// and waited for a writer forever (and, with diskType, handed a directory
// to the post-processors). Issue 11, found writing FuzzFind.
func TestFindNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo, sub := filepath.Join(dir, "disk.img"), filepath.Join(dir, "d.raw")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []files{{list: []string{fifo}}, {list: []string{sub}, state: map[string]interface{}{"diskType": "raw"}}} {
		done := make(chan error, 1)
		go func() { _, err := Find(a); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "is not a regular file") {
				t.Errorf("%s: %v", a.list[0], err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Find still waiting after 5 s", a.list[0])
		}
	}
}
