package nixos

import "github.com/google/uuid"

// ParseUUID reads a UUID in its textual form into the byte order ext4 and
// blkid use (the textual order).
func ParseUUID(s string) ([16]byte, error) {
	u, err := uuid.Parse(s)
	return [16]byte(u), err
}
