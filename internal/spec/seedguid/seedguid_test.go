package seedguid

import (
	"fmt"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
)

// TestFrozen pins the derivation: images already built carry these
// identifiers, and rebuilding them must give the same bytes.
func TestFrozen(t *testing.T) {
	g := Source{Seed: []byte("test")}
	for role, want := range map[string]string{
		DiskRole:      "134AA123-A2E0-5E0C-AE8C-53BC7E7207BA",
		"esp":         "5A0E2406-D0E0-5492-A4C1-E47F7F1CC40C",
		"partition-1": "1D0564D3-DFCC-59B0-AA64-A9B29A616770",
	} {
		if got := g.GUID(role); got != want {
			t.Errorf("GUID(%q) = %s, want %s", role, got, want)
		}
	}
	if got := fmt.Sprintf("%x", gptspec.GUIDBytes(g.UUID(DiskRole))); got != "23a14a13e0a20c5eae8c53bc7e7207ba" {
		t.Errorf("disk GUID on disk %s", got)
	}
	if got := g.MBRSignature(); got != 0x49bcc4dd {
		t.Errorf("MBRSignature() = %08x", got)
	}
	if got := (Source{}).GUID(DiskRole); got != "50275345-411D-52F2-A63D-B04C71E1CBEA" {
		t.Errorf("no seed: GUID(disk) = %s", got)
	}
	if got := (Source{}).MBRSignature(); got != 0x8f89eba6 {
		t.Errorf("no seed: MBRSignature() = %08x", got)
	}
}
