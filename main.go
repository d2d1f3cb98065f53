// Command packer-plugin-nixos is the Packer plugin that builds NixOS disk
// images. It registers the components; in the installer VM it is the
// guest agent.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/plugin"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/nixos"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agent"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/post-processor/convert"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/post-processor/reproducible"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/provisioner/contents"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/version"
)

func main() {
	// In the installer VM this same (static) binary is /init.
	if agent.IsAgent() {
		agent.Main()
	}
	pps := plugin.NewSet()
	pps.RegisterBuilder("image", new(nixos.Builder))
	pps.RegisterProvisioner("contents", new(contents.Provisioner))
	pps.RegisterPostProcessor("convert", new(convert.PostProcessor))
	pps.RegisterPostProcessor("reproducible", new(reproducible.PostProcessor))
	pps.SetVersion(version.PluginVersion)
	if err := pps.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err.Error())
		os.Exit(1)
	}
}
