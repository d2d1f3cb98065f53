// Command testagent is the guest agent alone, small enough to build static
// for the QEMU tests of package guest.
package main

import "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/guest"

func main() { guest.Main() }
