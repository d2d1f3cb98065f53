packer {
  required_plugins {
    nixos = {
      source  = "github.com/packer-plugin-nixos/nixos"
      version = ">= 0.1.0"
    }
  }
}

source "nixos-image" "inst" {

  system               = "/nix/store/40sfh9ix7n43kramp5rl39gjxv4kl2pk-nixos-system-fixture-efi-25.05.fixture"
  partition_table_type = "efi"
  additional_space     = "32M"
  accelerator          = "tcg"
  output_directory     = "/tmp/TestAccInstallLayoutsefi1962016898/001/out"

}

build {
  sources = ["source.nixos-image.inst"]

}
