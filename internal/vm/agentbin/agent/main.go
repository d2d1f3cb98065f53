// Command agent is the installer VM's /init alone: package agent and what
// it imports, without the Packer SDK. agentbin embeds it, built static, so
// the installer initrd carries a few MiB instead of the whole plugin.
package main

import (
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agent"
)

func main() { agent.Main() }
