# Installed as /etc/nixos/configuration.nix by the nixos-contents provisioner
# (example/install.pkr.hcl), for nixos-rebuild on the running machine.
{ ... }:
{
  boot.loader.systemd-boot.enable = true;
  fileSystems."/".device = "/dev/disk/by-label/nixos";
  fileSystems."/boot".device = "/dev/disk/by-label/ESP";
}
