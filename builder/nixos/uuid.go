package nixos

import (
	"crypto/rand"
	"crypto/sha256"

	"github.com/google/uuid"
)

// ParseUUID reads a UUID in its textual form into the byte order ext4 and
// blkid use (the textual order).
func ParseUUID(s string) ([16]byte, error) {
	u, err := uuid.Parse(s)
	return [16]byte(u), err
}

// fsUUID is the root filesystem's UUID: root_fs_uuid, else a random one.
func fsUUID(c *Config) ([16]byte, error) {
	var u [16]byte
	if c.RootFSUUID == "" {
		rand.Read(u[:])
		u[6] = u[6]&0x0f | 0x40
		u[8] = u[8]&0x3f | 0x80
		return u, nil
	}
	return ParseUUID(c.RootFSUUID)
}

// hashSeed derives the htree hash seed from the filesystem UUID, so a fixed
// UUID gives a fixed directory layout.
func hashSeed(uuid [16]byte) [16]byte {
	sum := sha256.Sum256(append([]byte("packer-plugin-nixos ext4 hash seed\x00"), uuid[:]...))
	var s [16]byte
	copy(s[:], sum[:])
	return s
}
