packer {
  required_plugins {
    nixos = {
      source  = "github.com/packer-plugin-nixos/nixos"
      version = ">= 0.1.0"
    }
  }
}

variable "store_paths" {
  type        = list(string)
  description = "Store paths whose closures go into the image."
}

# A store-only image: the closure of store_paths and its registration, on an
# ext4 filesystem labelled nix-store inside a GPT disk with an ESP. Mount its
# root partition on /nix/store and load /nix/store/nix-path-registration with
# `nix-store --load-db`.
source "nixos-image" "store" {
  only_nix_store       = true
  store_paths          = var.store_paths
  partition_table_type = "efi"
  disk_size            = "auto"
  additional_space     = "64M"
  format               = "qcow2"
  output_directory     = "${path.root}/output-store"
}

build {
  sources = ["source.nixos-image.store"]

  post-processor "manifest" {
    output = "${path.root}/output-store/manifest.json"
  }
}
