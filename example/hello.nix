# A tiny closure for the example, built with no nixpkgs: the host's /bin/sh is
# the builder and the result references a second store path, as real software
# references its libraries.
let
  greeting = derivation {
    name = "example-greeting";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-euc" ''
      /bin/mkdir -p "$out/share"
      echo "Hello from a NixOS store image built by Packer" > "$out/share/greeting"
    '' ];
  };
in
derivation {
  name = "example-hello";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-euc" ''
    /bin/mkdir -p "$out/bin"
    printf '#!/bin/sh\nexec cat %s/share/greeting\n' "${greeting}" > "$out/bin/hello"
    /bin/chmod 0555 "$out/bin/hello"
  '' ];
}
