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
echo
echo "Image: $here/output-store/nixos.qcow2"
