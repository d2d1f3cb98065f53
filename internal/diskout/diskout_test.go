package diskout

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// fakeDriver writes dst as qemu-img would, or fails with err.
type fakeDriver struct {
	err    error
	staged string // the dst Convert was given
}

func (f *fakeDriver) Convert(_ context.Context, _ qemuimg.Spec, _, _, dst string, progress func(float64)) error {
	f.staged = dst
	if f.err != nil {
		return f.err
	}
	progress(100)
	return os.WriteFile(dst, []byte("converted"), 0o644)
}

func (f *fakeDriver) Info(context.Context, string, string) (qemuimg.Info, error) {
	return qemuimg.Info{}, f.err
}

func spec(t *testing.T, format string) qemuimg.Spec {
	t.Helper()
	s, err := qemuimg.Parse(format, "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The conversion is staged under the final base name (vmdk records it),
// then renamed; no staging directory is left behind.
func TestWriteStagesUnderFinalName(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "disk.vmdk")
	d := &fakeDriver{}
	if err := Write(context.Background(), Job{Driver: d, Spec: spec(t, "vmdk"), Src: "in.img", SrcFormat: "raw", Final: final}); err != nil {
		t.Fatal(err)
	}
	if filepath.Base(d.staged) != "disk.vmdk" || filepath.Dir(d.staged) == dir {
		t.Errorf("converted into %s; want a staging directory and the final base name", d.staged)
	}
	if b, err := os.ReadFile(final); err != nil || string(b) != "converted" {
		t.Errorf("final image: %q, %v", b, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%s holds %d entries; want only the image", dir, len(ents))
	}
}

// A failed conversion or seed leaves neither the final
// name nor the staging directory.
func TestWriteLeavesNothingOnFailure(t *testing.T) {
	boom := errors.New("boom")
	for name, j := range map[string]Job{
		"convert": {Driver: &fakeDriver{err: boom}, Spec: spec(t, "qcow2")},
		"seed":    {Driver: &fakeDriver{}, Spec: spec(t, "vmdk"), Deterministic: true, Seed: func() ([]byte, error) { return nil, boom }},
	} {
		dir := t.TempDir()
		j.Src, j.SrcFormat, j.Final = "in.img", "raw", filepath.Join(dir, "disk."+j.Spec.Ext)
		err := Write(context.Background(), j)
		if !errors.Is(err, boom) {
			t.Errorf("%s: %v; want the failure", name, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: %s still holds %v", name, dir, ents)
		}
	}
}
