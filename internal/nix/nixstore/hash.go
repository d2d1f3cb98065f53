package nixstore

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// nixBase32 is Nix's base-32 alphabet (no e, o, u, t), used in store paths and hashes.
const nixBase32 = "0123456789abcdfghijklmnpqrsvwxyz"

const sha256Size = 32

// ParseNarHash accepts a SHA-256 NAR hash in any form Nix prints or reads: bare hex (as
// `nix-store --dump-db` prints it), "sha256:" with hex or Nix base-32 (closureInfo), or SRI
// "sha256-<base64>". It returns the canonical "sha256:<hex>".
func ParseNarHash(s string) (string, error) {
	body, sri := s, false
	switch {
	case strings.HasPrefix(s, "sha256:"):
		body = s[len("sha256:"):]
	case strings.HasPrefix(s, "sha256-"):
		body, sri = s[len("sha256-"):], true
	case strings.Contains(s, ":") || strings.Contains(s, "-"):
		return "", fmt.Errorf("NAR hash %q: only sha256 is supported", s)
	}
	var sum []byte
	var err error
	switch {
	case sri:
		sum, err = base64.StdEncoding.DecodeString(body)
	case len(body) == 2*sha256Size:
		sum, err = hex.DecodeString(body)
	case len(body) == base32Len(sha256Size):
		sum, err = decodeBase32(body, sha256Size)
	default:
		err = fmt.Errorf("wrong length %d", len(body))
	}
	if err == nil && len(sum) != sha256Size {
		err = fmt.Errorf("wrong length %d", len(sum))
	}
	if err != nil {
		return "", fmt.Errorf("NAR hash %q is not a SHA-256 hash: %v", s, err)
	}
	return "sha256:" + hex.EncodeToString(sum), nil
}

func base32Len(n int) int { return (n*8-1)/5 + 1 }

// decodeBase32 inverts Nix's encoding, which writes the hash's bits least significant
// first, five at a time, starting from the last character.
func decodeBase32(s string, size int) ([]byte, error) {
	out := make([]byte, size)
	for n := 0; n < len(s); n++ {
		c := s[len(s)-1-n]
		digit := strings.IndexByte(nixBase32, c)
		if digit < 0 {
			return nil, fmt.Errorf("invalid base-32 character %q", c)
		}
		b := n * 5
		i, j := b/8, uint(b%8)
		out[i] |= byte(digit << j)
		if carry := byte(digit >> (8 - j)); i+1 < size {
			out[i+1] |= carry
		} else if carry != 0 {
			return nil, fmt.Errorf("base-32 value out of range")
		}
	}
	return out, nil
}

// encodeBase32 is Nix's base-32 encoding (for tests and for printing).
func encodeBase32(sum []byte) string {
	n := base32Len(len(sum))
	var sb strings.Builder
	for k := n - 1; k >= 0; k-- {
		b := k * 5
		i, j := b/8, uint(b%8)
		c := sum[i] >> j
		if i+1 < len(sum) {
			c |= sum[i+1] << (8 - j)
		}
		sb.WriteByte(nixBase32[c&0x1f])
	}
	return sb.String()
}
