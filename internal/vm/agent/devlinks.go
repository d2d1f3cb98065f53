package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// linkBlockDevices creates dev/block/MAJ:MIN -> ../NAME for every block
// device sysfs lists in sysBlock (/sys/class/block), as udev does on a
// booted system: the installer has no udev, and bootctl resolves the
// ESP's partition to its disk through these links. Links already there
// are left alone.
func linkBlockDevices(sysBlock, dev string) error {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return fmt.Errorf("block device links: %w", err)
	}
	dir := filepath.Join(dev, "block")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("block device links: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "dev"))
		if err != nil {
			return fmt.Errorf("block device links: %w", err)
		}
		majMin := strings.TrimSpace(string(b))
		if strings.Count(majMin, ":") != 1 || strings.ContainsAny(majMin, "/ ") {
			return fmt.Errorf("block device links: %s/dev holds %q, not MAJ:MIN", e.Name(), majMin)
		}
		if _, err := os.Stat(filepath.Join(dev, e.Name())); err != nil {
			continue // no node (yet) for it, e.g. a device being removed
		}
		if err := os.Symlink("../"+e.Name(), filepath.Join(dir, majMin)); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("block device links: %w", err)
		}
	}
	return nil
}
