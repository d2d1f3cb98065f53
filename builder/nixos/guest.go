package nixos

import (
	"errors"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentclient"
)

// Where the installer VM's agent finds the installed system.
const (
	guestRoot     = "/mnt"
	systemProfile = "/nix/var/nix/profiles/system"
)

// isNotExist says whether the agent failed for want of the file.
func isNotExist(err error) bool {
	var re *agentclient.RemoteError
	return errors.As(err, &re) && strings.Contains(strings.ToLower(re.Message), "no such file")
}

// partIndex is the 1-based number of the partition with role r, as the
// guest kernel names it (/dev/vdaN).
func partIndex(l *disk.Layout, r disk.Role) int {
	for i, p := range l.Partitions {
		if p.Role == r {
			return i + 1
		}
	}
	return 0
}
