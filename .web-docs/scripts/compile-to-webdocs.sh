#!/usr/bin/env bash
# Turns the rendered docs (packer-sdc renderdocs output) into the .web-docs
# layout the Packer integrations portal reads: README.md plus one README.md per
# component under components/<kind>/<name>/, and metadata.hcl.
set -euo pipefail
root=$1 rendered=$2 out=$3 name=$4
rm -rf "$out/components" "$out/README.md"
mkdir -p "$out/components"
cp "$rendered/README.md" "$out/README.md"
for kind_dir in "$rendered"/*/; do
  kind=$(basename "$kind_dir")         # builders, provisioners, post-processors
  singular=${kind%s}
  for page in "$kind_dir"*.mdx; do
    [ -e "$page" ] || continue
    comp=$(basename "$page" .mdx)
    mkdir -p "$out/components/$singular/$comp"
    # Drop the front matter; the portal builds its own title.
    awk 'NR==1 && /^---$/ {fm=1; next} fm && /^---$/ {fm=0; next} !fm' "$page" > "$out/components/$singular/$comp/README.md"
  done
done
# Every component the docs have, so the portal lists them all.
{
  cat <<HCL
# For the Packer integrations portal.
integration {
  name        = "NixOS"
  description = "Builds NixOS disk images: store-only and full installs, streamed on the host, reproducible."
  identifier  = "packer/packer-plugin-nixos/nixos"
HCL
  for kind in builder provisioner post-processor; do
    for dir in "$out/components/$kind"/*/; do
      [ -d "$dir" ] || continue
      slug=$(basename "$dir")
      printf '  component {\n    type = "%s"\n    name = "nixos-%s"\n    slug = "%s"\n  }\n' "$kind" "$slug" "$slug"
    done
  done
  echo "}"
} > "$out/metadata.hcl"
echo "web docs written to $out for $name ($root)"
