package nixos

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/fat"
)

// formatFAT makes empty FAT32 filesystems on the ESP (label ESP) and
// XBOOTLDR (label BOOT) partitions, as make-disk-image's mkfs.vfat calls do;
// the boot loader installation fills them. Volume IDs come from the seed.
func formatFAT(f *os.File, p *plan) error {
	for _, part := range []struct {
		role  disk.Role
		label string
	}{{disk.RoleESP, "ESP"}, {disk.RoleXBootLdr, "BOOT"}} {
		pt, ok := p.layout.Find(part.role)
		if !ok {
			continue
		}
		sum := sha256.Sum256(append([]byte("fat volume id\x00"+part.label+"\x00"), p.seed...))
		w, err := fat.NewWriter(f, pt.Start, fat.Options{Size: pt.Size, Label: part.label,
			VolumeID: binary.LittleEndian.Uint32(sum[:4]), Time: p.epoch})
		if err == nil {
			err = w.Close()
		}
		if err != nil {
			return fmt.Errorf("formatting the %s partition: %w", part.label, err)
		}
	}
	return nil
}
