// Command testagent is the guest agent alone, small enough to build static
// for the QEMU tests of package agent.
package main

import (
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agent"
)

func main() { agent.Main() }
