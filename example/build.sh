#!/usr/bin/env bash
# Builds the example: the example closure in the local Nix store, then the
# store-only image from it with the installed plugin and packer.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
packer=${PACKER:-${XDG_CACHE_HOME:-$HOME/.cache}/packer-plugin-nixos/packer}
export CHECKPOINT_DISABLE=1

mkdir -p /nix/var/nix/gcroots/packer-plugin-nixos
hello=$(nix-build --no-out-link "$here/hello.nix")
ln -sfn "$hello" /nix/var/nix/gcroots/packer-plugin-nixos/example-hello

"$packer" build -force -var "store_paths=[\"$hello\"]" "$here/store-only.pkr.hcl"

# Install mode needs a NixOS system. With no nixpkgs on this machine, the
# example installs the project's test system: a NixOS-like toplevel made of
# Debian's kernel, systemd-boot and busybox (internal/testkit/fixtures).
system=$(bash "$here/../internal/testkit/fixtures/build.sh" system-efi)
"$packer" build -force -var "system=$system" "$here/install.pkr.hcl"

echo
echo "Store-only image: $here/output-store/nixos.qcow2"
echo "Installed image:  $here/output-install/nixos.qcow2 (EFI variables: $here/output-install/efi-vars.fd)"
echo "VMware copy:      $here/output-install/nixos.vmdk (sha256 in nixos.vmdk.sha256)"
