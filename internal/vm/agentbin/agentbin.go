// Package agentbin holds the installer VM's agent as a separate static
// binary (./agent, built by `go generate`, which `make build` runs) for the
// installer initrd. Under TCG the whole plugin as /init cost the installer
// about 0.8 s more than the agent alone: the kernel unpacks a 45 MiB
// initrd instead of a few MiB, and the Go runtime starts the Packer SDK's
// package initialisers. A plugin built without `go generate` has no agent
// here, and the installer runs the plugin binary itself as /init, which
// works the same, only slower (and only for a system of its own
// architecture).
//
// Every plugin binary embeds an agent for each architecture the installer
// VM runs (amd64, arm64), whatever its own: the VM boots the installed
// system's kernel, so an x86_64 host installing an aarch64 system needs
// the arm64 agent. Embedding rather than building on demand keeps a Go
// toolchain off users' machines and the agent's bytes fixed by the
// release; the second agent costs about 2.4 MiB per plugin binary (1 MB
// in the release zip).
package agentbin

import (
	"embed"
	"strings"
)

//go:generate go run ./gen

//go:embed bin
var bin embed.FS

// Agent is the agent binary for goarch and the hash of the sources it was
// built from (srchash.Of), or ok false when this plugin was built without
// it.
func Agent(goarch string) (data []byte, sourceHash string, ok bool) {
	data, err := bin.ReadFile("bin/agent-linux-" + goarch)
	if err != nil {
		return nil, "", false
	}
	h, err := bin.ReadFile("bin/agent-linux-" + goarch + ".srchash")
	if err != nil {
		return nil, "", false
	}
	return data, strings.TrimSpace(string(h)), true
}
