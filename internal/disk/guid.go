package disk

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/seedguid"
)

// pickGUID validates given, or derives it from role when given is empty.
func pickGUID(g seedguid.Source, what, given, role string) (string, error) {
	if given == "" {
		return g.GUID(role), nil
	}
	s, err := normalizeGUID(given)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return s, nil
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
	return gptspec.FormatGUID(u), nil
}
