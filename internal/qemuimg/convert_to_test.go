package qemuimg

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// fakeDriver writes dst as qemu-img would, or fails with err.
type fakeDriver struct {
	err    error
	staged string // the dst Convert was given
}

func (f *fakeDriver) Convert(_ context.Context, _ Spec, _, _, dst string, progress func(float64)) error {
	f.staged = dst
	if f.err != nil {
		return f.err
	}
	progress(100)
	return os.WriteFile(dst, []byte("converted"), 0o644)
}

func (f *fakeDriver) Info(context.Context, string, string) (Info, error) { return Info{}, f.err }

// The conversion is staged under the final base name (vmdk records it),
// finished there, then renamed; no staging directory is left behind.
func TestConvertToStagesUnderFinalName(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "disk.vmdk")
	s, _ := Parse("vmdk", "")
	d := &fakeDriver{}
	var finished string
	err := ConvertTo(context.Background(), d, s, "in.img", "raw", final, func(float64) {}, func(staged string) error {
		finished = staged
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(d.staged) != "disk.vmdk" || filepath.Dir(d.staged) == dir || finished != d.staged {
		t.Errorf("converted into %s, finished %s; want a staging directory and the final base name", d.staged, finished)
	}
	if b, err := os.ReadFile(final); err != nil || string(b) != "converted" {
		t.Errorf("final image: %q, %v", b, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%s holds %d entries; want only the image", dir, len(ents))
	}
}

// A failed conversion or finish leaves neither the final name nor the
// staging directory.
func TestConvertToLeavesNothingOnFailure(t *testing.T) {
	s, _ := Parse("qcow2", "")
	boom := errors.New("boom")
	for name, c := range map[string]struct {
		d      *fakeDriver
		finish func(string) error
	}{
		"convert": {&fakeDriver{err: boom}, nil},
		"finish":  {&fakeDriver{}, func(string) error { return boom }},
	} {
		dir := t.TempDir()
		err := ConvertTo(context.Background(), c.d, s, "in.img", "raw", filepath.Join(dir, "disk.qcow2"), func(float64) {}, c.finish)
		if !errors.Is(err, boom) {
			t.Errorf("%s: %v; want the failure", name, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: %s still holds %v", name, dir, ents)
		}
	}
}
