# For the Packer integrations portal.
integration {
  name        = "NixOS"
  description = "Builds NixOS disk images: store-only and full installs, streamed on the host, reproducible."
  identifier  = "packer/packer-plugin-nixos/nixos"
  component {
    type = "builder"
    name = "nixos-image"
    slug = "image"
  }
  component {
    type = "provisioner"
    name = "nixos-contents"
    slug = "contents"
  }
  component {
    type = "post-processor"
    name = "nixos-convert"
    slug = "convert"
  }
  component {
    type = "post-processor"
    name = "nixos-reproducible"
    slug = "reproducible"
  }
}
