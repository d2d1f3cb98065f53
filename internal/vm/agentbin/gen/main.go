// Command gen builds the agent (../agent) static for each architecture
// the installer VM runs, into ../bin, with the hash of its sources. Run
// by `go generate ./internal/vm/agentbin` from that directory.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentbin/srchash"
)

// archs are the installer VM architectures an agent is built for: every
// plugin binary carries all of them, since the agent must match the
// system being installed (whose kernel the VM boots), not the host.
var archs = []string{"amd64", "arm64"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "agentbin/gen:", err)
		os.Exit(1)
	}
}

func run() error {
	root, err := filepath.Abs("../../..")
	if err != nil {
		return err
	}
	for _, arch := range archs {
		hash, err := srchash.Of(root, srchash.AgentPkg, arch)
		if err != nil {
			return err
		}
		out := filepath.Join("bin", "agent-linux-"+arch)
		// -s -w: symbols and DWARF only cost the initrd; -trimpath and no
		// VCS stamp keep the bytes independent of the checkout.
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out+".tmp", srchash.AgentPkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building the %s agent: %w", arch, err)
		}
		if err := os.Rename(out+".tmp", out); err != nil {
			return err
		}
		if err := os.WriteFile(out+".srchash", []byte(hash+"\n"), 0o644); err != nil {
			return err
		}
	}
	return nil
}
