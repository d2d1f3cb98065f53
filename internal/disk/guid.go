package disk

import (
	"crypto/sha1" //nolint:gosec // RFC 4122 version 5 is defined on SHA-1; no security relies on it
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// guidNamespace is the RFC 4122 namespace of our derived GUIDs: the ASCII
// bytes of "nixos-disklayout", so that a seed shared with another package
// (say the ext4 UUID) never yields the same GUID here.
var guidNamespace = [16]byte{'n', 'i', 'x', 'o', 's', '-', 'd', 'i', 's', 'k', 'l', 'a', 'y', 'o', 'u', 't'}

// guidSource derives GUIDs from the seed; no randomness, so the same
// options always give the same bytes.
type guidSource struct{ seed []byte }

func (g guidSource) hash(role string) [20]byte {
	h := sha1.New() //nolint:gosec // see import
	h.Write(guidNamespace[:])
	h.Write([]byte(role))
	h.Write([]byte{0}) // the role cannot run into the seed
	h.Write(g.seed)
	var sum [20]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// uuid returns the version 5 UUID named role+seed, in RFC 4122 (big-endian)
// byte order.
func (g guidSource) uuid(role string) [16]byte {
	sum := g.hash(role)
	var u [16]byte
	copy(u[:], sum[:16])
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u
}

// derive returns uuid(role), upper case as sgdisk prints GUIDs.
func (g guidSource) derive(role string) string { return formatGUID(g.uuid(role)) }

// pick validates given, or derives from role when given is empty.
func (g guidSource) pick(what, given, role string) (string, error) {
	if given == "" {
		return g.derive(role), nil
	}
	s, err := normalizeGUID(given)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return s, nil
}

// mbrSignature derives the MBR disk signature; never 0, which some tools
// read as "no signature".
func (g guidSource) mbrSignature() uint32 {
	sum := g.hash("mbr-signature")
	s := binary.LittleEndian.Uint32(sum[:4])
	if s == 0 {
		s = 1
	}
	return s
}

func formatGUID(u [16]byte) string {
	h := strings.ToUpper(hex.EncodeToString(u[:]))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// normalizeGUID checks the 8-4-4-4-12 hex form and returns it upper case.
// The nil GUID is refused: in a GPT it means "unused".
func normalizeGUID(s string) (string, error) {
	bad := func() (string, error) {
		return "", fmt.Errorf("%q is not a GUID: want 32 hex digits as 8-4-4-4-12, e.g. %s", s, DefaultRootGUID)
	}
	if len(s) != 36 {
		return bad()
	}
	for _, i := range []int{8, 13, 18, 23} {
		if s[i] != '-' {
			return bad()
		}
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return bad()
	}
	var u [16]byte
	copy(u[:], b)
	if u == ([16]byte{}) {
		return "", fmt.Errorf("%q is the nil GUID, which GPT reserves for unused entries: give a non-zero GUID", s)
	}
	return formatGUID(u), nil
}
