package nixos

import (
	"fmt"
	"runtime"
)

// goarchOf is the Go architecture (GOARCH) of a Nix platform (a
// toplevel's `system` file): the installer agent and kernel modules for
// the VM that boots a system of that platform.
func goarchOf(platform string) (string, error) {
	switch platform {
	case "x86_64-linux":
		return "amd64", nil
	case "aarch64-linux":
		return "arm64", nil
	}
	return "", fmt.Errorf("the system's platform is %q: install mode has an installer agent for x86_64-linux and aarch64-linux only", platform)
}

// installerGOARCH is the architecture of the system's installer VM: the
// system's own, since the VM boots the system's kernel, whatever the host.
// A toplevel that names no platform (no `system` file) is taken as built
// for this host, as nix-build builds by default.
func (t *toplevel) installerGOARCH() (string, error) {
	if t.wants == nil || t.wants.Platform == "" {
		return runtime.GOARCH, nil
	}
	return goarchOf(t.wants.Platform)
}
