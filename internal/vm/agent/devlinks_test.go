package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// Every block device with a node gets dev/block/MAJ:MIN -> ../NAME, as
// udev makes them; a second run, or a link already there, is fine.
func TestLinkBlockDevices(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	for name, majMin := range map[string]string{"vda": "254:0", "vda1": "254:1", "vda2": "254:2", "gone": "254:9"} {
		os.MkdirAll(filepath.Join(sys, name), 0o755)
		os.WriteFile(filepath.Join(sys, name, "dev"), []byte(majMin+"\n"), 0o444)
		if name != "gone" {
			os.WriteFile(filepath.Join(dev, name), nil, 0o600)
		}
	}
	for i := 0; i < 2; i++ {
		if err := linkBlockDevices(sys, dev); err != nil {
			t.Fatal(err)
		}
	}
	for majMin, want := range map[string]string{"254:0": "../vda", "254:1": "../vda1", "254:2": "../vda2"} {
		if got, err := os.Readlink(filepath.Join(dev, "block", majMin)); err != nil || got != want {
			t.Errorf("dev/block/%s -> %q (%v); want %q", majMin, got, err, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(dev, "block/254:9")); err == nil {
		t.Error("a link was made for a device without a node")
	}
	os.WriteFile(filepath.Join(sys, "vda", "dev"), []byte("../../etc\n"), 0o444)
	if err := linkBlockDevices(sys, dev); err == nil {
		t.Error("a dev file that is no MAJ:MIN was accepted")
	}
}
