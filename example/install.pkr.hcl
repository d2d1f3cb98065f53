packer {
  required_plugins {
    nixos = {
      source  = "github.com/packer-plugin-nixos/nixos"
      version = ">= 0.1.0"
    }
  }
}

variable "system" {
  type        = string
  description = "A NixOS system: a config.system.build.toplevel store path."
}

# A full installation: the system's closure, skeleton and Nix database written
# on the host, then a 256 MiB QEMU VM activates it and installs systemd-boot
# into the ESP. Boot it with OVMF:
#   qemu-system-x86_64 -machine q35 -m 512 \
#     -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
#     -drive if=pflash,format=raw,file=output-install/efi-vars.fd \
#     -drive file=output-install/nixos.qcow2,if=virtio -nographic
source "nixos-image" "install" {
  system               = var.system
  partition_table_type = "efi"
  touch_efi_vars       = true
  additional_space     = "64M"
  format               = "qcow2"
  output_directory     = "${path.root}/output-install"
}

build {
  sources = ["source.nixos-image.install"]

  # make-disk-image's contents and configFile, with owners from the image's
  # own /etc/passwd.
  provisioner "nixos-contents" {
    config_file = "${path.root}/configuration.nix"
    content {
      inline = "Built by packer-plugin-nixos.\n"
      target = "/etc/motd"
      mode   = "0644"
      user   = "root"
      group  = "root"
    }
  }

  # A VMware copy too (the qcow2 and efi-vars.fd stay), with its checksum.
  post-processors {
    post-processor "nixos-convert" {
      format              = "vmdk"
      keep_input_artifact = true
    }
    post-processor "checksum" {
      checksum_types = ["sha256"]
      output         = "${path.root}/output-install/nixos.vmdk.sha256"
    }
  }
}
