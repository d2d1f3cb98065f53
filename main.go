// Command packer-plugin-nixos is the Packer plugin that builds NixOS disk
// images. It only registers the components.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/plugin"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/nixos"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/version"
)

func main() {
	pps := plugin.NewSet()
	pps.RegisterBuilder("image", new(nixos.Builder))
	pps.SetVersion(version.PluginVersion)
	if err := pps.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err.Error())
		os.Exit(1)
	}
}
