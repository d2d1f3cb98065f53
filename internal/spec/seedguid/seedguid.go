// Package seedguid derives a partition table's GUIDs and MBR disk signature
// from a seed, so that the layout planner (internal/disk) and the partition
// normaliser (internal/normalize/partition) give a seed the same identifiers.
package seedguid

import (
	"crypto/sha1" //nolint:gosec // RFC 4122 version 5 is defined on SHA-1; no security relies on it
	"encoding/binary"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
)

// DiskRole names the GPT disk GUID, which both the planner and the
// normaliser derive.
const DiskRole = "disk"

// namespace is the RFC 4122 namespace of our derived GUIDs: the ASCII
// bytes of "nixos-disklayout", so that a seed shared with another package
// (say the ext4 UUID) never yields the same GUID here. It is frozen: a new
// value would change every image's identifiers.
var namespace = [16]byte{'n', 'i', 'x', 'o', 's', '-', 'd', 'i', 's', 'k', 'l', 'a', 'y', 'o', 'u', 't'}

// Source derives GUIDs from Seed; no randomness, so the same seed always
// gives the same bytes.
type Source struct{ Seed []byte }

func (g Source) hash(role string) [20]byte {
	h := sha1.New() //nolint:gosec // see import
	h.Write(namespace[:])
	h.Write([]byte(role))
	h.Write([]byte{0}) // the role cannot run into the seed
	h.Write(g.Seed)
	var sum [20]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// UUID returns the version 5 UUID named role+seed, in RFC 4122 (big-endian)
// byte order.
func (g Source) UUID(role string) [16]byte {
	sum := g.hash(role)
	var u [16]byte
	copy(u[:], sum[:16])
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u
}

// GUID returns UUID(role), upper case as sgdisk prints GUIDs.
func (g Source) GUID(role string) string { return gptspec.FormatGUID(g.UUID(role)) }

// MBRSignature derives the MBR disk signature; never 0, which some tools
// read as "no signature".
func (g Source) MBRSignature() uint32 {
	sum := g.hash("mbr-signature")
	s := binary.LittleEndian.Uint32(sum[:4])
	if s == 0 {
		s = 1
	}
	return s
}
