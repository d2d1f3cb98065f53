package nixos

import (
	"runtime"
	"strings"
	"testing"

	nixtoplevel "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/toplevel"
)

func TestGoarchOf(t *testing.T) {
	for platform, want := range map[string]string{"x86_64-linux": "amd64", "aarch64-linux": "arm64"} {
		if got, err := goarchOf(platform); err != nil || got != want {
			t.Errorf("goarchOf(%q) = %q, %v; want %q", platform, got, err, want)
		}
	}
	// Nix names, not Go's or the kernel's; no agent for other platforms.
	for _, platform := range []string{"arm64", "amd64", "aarch64", "aarch64-darwin", "riscv64-linux", "i686-linux", "x86_64-linux "} {
		if got, err := goarchOf(platform); err == nil || !strings.Contains(err.Error(), "aarch64-linux") {
			t.Errorf("goarchOf(%q) = %q, %v; want an error naming the platforms there are agents for", platform, got, err)
		}
	}
}

// The installer's architecture is the system's, not the host's.
func TestInstallerGOARCH(t *testing.T) {
	for _, c := range []struct {
		wants *nixtoplevel.System
		want  string
	}{
		{&nixtoplevel.System{Platform: "aarch64-linux"}, "arm64"},
		{&nixtoplevel.System{Platform: "x86_64-linux"}, "amd64"},
		{&nixtoplevel.System{}, runtime.GOARCH},
		{nil, runtime.GOARCH},
	} {
		got, err := (&toplevel{wants: c.wants}).installerGOARCH()
		if err != nil || got != c.want {
			t.Errorf("installerGOARCH of %+v = %q, %v; want %q", c.wants, got, err, c.want)
		}
	}
	if _, err := (&toplevel{wants: &nixtoplevel.System{Platform: "riscv64-linux"}}).installerGOARCH(); err == nil {
		t.Error("an installer for riscv64-linux")
	}
}
