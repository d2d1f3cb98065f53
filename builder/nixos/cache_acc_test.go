package nixos

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// The same template built from the host's store, from an xz cache over HTTP
// and from a zstd cache as file://, in every store-only layout for the small
// fixture (in the efi layout also from the xz cache with its signatures
// removed, require_sigs = false), and in the efi layout for the Debian tree
// (~25k entries, 0.7 GB; its cache is zstd only, over HTTP and as file://:
// `nix copy` takes ~5 minutes to compress it with xz here), all in one packer
// build: every image is byte-identical to the one from the host's store, the
// spool directory is gone afterwards, and the cache images pass the
// filesystem, tree and registration oracles.
func TestAccCacheByteIdentical(t *testing.T) {
	accRequire(t)
	small := fixtures.Build(t, "small")
	debian := fixtures.Build(t, "debian")
	key := accNewKey(t, "acc-cache-1")
	xzDir := accNixCopy(t, key, "xz", small...)
	zstdDir := accNixCopy(t, key, "zstd", append(slices.Clone(small), debian...)...)
	// The xz cache with every Sig line removed, for require_sigs = false.
	unsignedDir := accCopyCache(t, xzDir)
	for _, p := range small {
		accEditNarInfo(t, unsignedDir, p, func(l string) string {
			if strings.HasPrefix(l, "Sig: ") {
				return ""
			}
			return l
		})
	}
	origins := map[string]string{
		"xz_http":       cachetest.Serve(t, xzDir, nil),
		"zstd_http":     cachetest.Serve(t, zstdDir, nil),
		"zstd_file":     "file://" + zstdDir,
		"unsigned_http": cachetest.Serve(t, unsignedDir, nil),
	}
	outs := t.TempDir()
	out := func(name string) string { return filepath.Join(outs, name) }

	type group struct {
		roots          []string
		layout         string
		mbr            bool
		cacheOrigins   []string
		imagesByOrigin map[string]string
	}
	var sources []accSource
	var groups []*group
	add := func(prefix string, roots []string, layout string, mbr bool, cacheOrigins ...string) *group {
		g := &group{roots: roots, layout: layout, mbr: mbr, cacheOrigins: cacheOrigins, imagesByOrigin: map[string]string{}}
		for _, o := range append([]string{"local"}, cacheOrigins...) {
			name := prefix + "_" + o
			body := accStoreOnly(roots, layout, mbr, out(name), origins[o], key.pub)
			if o == "unsigned_http" {
				body = accStoreOnly(roots, layout, mbr, out(name), origins[o]) + "\n  require_sigs         = false"
			}
			sources = append(sources, accSource{name, body})
			g.imagesByOrigin[o] = filepath.Join(out(name), "nixos.img")
		}
		groups = append(groups, g)
		return g
	}
	for _, l := range accLayouts {
		caches := []string{"xz_http", "zstd_file"}
		if l.name == "efi" {
			caches = append(caches, "unsigned_http")
		}
		add("small_"+l.name, small, l.layout, l.mbr, caches...)
	}
	deb := add("debian_efi", debian, "efi", false, "zstd_http", "zstd_file")

	tmp := accSetTmpdir(t)
	begin := time.Now()
	res := runPacker(t, "cache_identical", accTemplate(sources))
	res.MustSucceed(t)
	t.Logf("%d builds in one packer build: %s", len(sources), time.Since(begin).Round(time.Millisecond))
	accRequireEmpty(t, tmp, "TMPDIR after the builds")
	for _, s := range sources {
		fromCache := !strings.HasSuffix(s.name, "_local")
		if got := res.Has("nixos-image." + s.name + ": Downloading "); got != fromCache {
			t.Errorf("%s: the log says it downloaded NARs: %v; want %v", s.name, got, fromCache)
		}
	}

	for _, g := range groups {
		want := imagecheck.SHA256File(t, g.imagesByOrigin["local"])
		t.Logf("%s %s (hybrid_mbr %v): sha256 %s… from the host's store, compared with %v", path.Base(g.roots[0]), g.layout, g.mbr, want[:16], g.cacheOrigins)
		for _, o := range g.cacheOrigins {
			if got := imagecheck.SHA256File(t, g.imagesByOrigin[o]); got != want {
				t.Errorf("%s layout %s (hybrid_mbr %v) from %s: sha256 %s; from the host's store %s",
					path.Base(g.roots[0]), g.layout, g.mbr, o, got, want)
			}
		}
	}
	if t.Failed() {
		return
	}

	// The oracles, on images from the caches (the same bytes as the host
	// store's, which TestAccStoreOnlyLayouts checks too). Store-only images
	// leave their ESP and XBOOTLDR unformatted, as make-disk-image's
	// onlyNixStore does: the root filesystem is what there is to check.
	accCheckStoreOnly(t, filepath.Join(out("small_efixbootldr_xz_http"), "nixos.img"), 3, closureOf(t, small))
	accCheckStoreOnly(t, deb.imagesByOrigin["zstd_http"], 2, debian)
}

// A build from the HTTP cache with no Nix on the machine: packer runs in a
// private mount namespace where a tmpfs hides /nix (no store, no database,
// no Nix under it) and /dev/null covers the host's Nix binaries outside /nix,
// as an unprivileged user (nobody), with a PATH holding nothing and HOME and
// TMPDIR of its own. A store-only image and an installed system (its
// installer VM under TCG, its Nix database written in Go) are
// byte-identical to the ones from the host's store, and nobody's TMPDIR is
// empty afterwards.
func TestAccCacheWithoutNix(t *testing.T) {
	accRequire(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs over /nix in a private mount namespace and to run packer as nobody")
	}
	for _, tool := range []string{"unshare", "setpriv", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not on PATH", tool)
		}
	}
	if out, err := exec.Command("unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
		"mount -t tmpfs -o size=1m probe /nix").CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs over /nix in a private mount namespace here: %v: %s", err, out)
	}
	small := fixtures.Build(t, "small")
	system := fixtures.Build(t, "system-bios")[0]
	qemuBin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not on PATH")
	}
	key := accNewKey(t, "acc-cache-1")
	sub := cachetest.Serve(t, accNixCopy(t, key, "xz", append(slices.Clone(small), system)...), nil)
	// The installer's QEMU by its path: nobody's PATH holds nothing.
	install := func(out, sub string, pubs ...string) string {
		return accInstall(system, "legacy", out, sub, pubs...) + fmt.Sprintf("\n  qemu_binary          = %q", qemuBin)
	}

	// From the host's store, as usual.
	localOut := filepath.Join(t.TempDir(), "out")
	localInstall := filepath.Join(t.TempDir(), "out")
	runPacker(t, "cache_nonix_local", accTemplate([]accSource{
		{"local", accStoreOnly(small, "efi", false, localOut, "")},
		{"local_install", install(localInstall, "")},
	})).MustSucceed(t)

	// Packer and the plugin, copied where nobody can read them: neither may
	// come from /nix.
	packerBin, err := exec.LookPath("packer")
	if err != nil {
		t.Fatal(err)
	}
	if packerBin, err = filepath.EvalSymlinks(packerBin); err != nil {
		t.Fatal(err)
	}
	pluginDir := os.Getenv("PACKER_PLUGIN_PATH")
	if pluginDir == "" {
		home, _ := os.UserHomeDir()
		pluginDir = filepath.Join(home, ".config", "packer", "plugins")
	}
	pluginDir = filepath.Join(pluginDir, "github.com", "packer-plugin-nixos", "nixos")
	plugins, _ := filepath.Glob(filepath.Join(pluginDir, "packer-plugin-nixos_*_linux_amd64"))
	if len(plugins) != 1 {
		t.Fatalf("want one installed plugin in %s (make dev), found %v", pluginDir, plugins)
	}
	for _, p := range []string{packerBin, plugins[0]} {
		if real, _ := filepath.EvalSymlinks(p); strings.HasPrefix(real, "/nix/") {
			t.Fatalf("%s is under /nix (%s): it would be hidden", p, real)
		}
	}
	base, err := os.MkdirTemp("", "acc-cache-nonix-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	var nobodyDirs []string
	for _, d := range []string{"home", "tmp", "outs", "bin", "work"} {
		nobodyDirs = append(nobodyDirs, filepath.Join(base, d))
	}
	pluginCopy := filepath.Join(base, "plugins", "github.com", "packer-plugin-nixos", "nixos")
	for _, d := range append(nobodyDirs, pluginCopy) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile := func(src, dst string, mode os.FileMode) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(packerBin, filepath.Join(base, "packer"), 0o755)
	copyFile(plugins[0], filepath.Join(pluginCopy, filepath.Base(plugins[0])), 0o755)
	copyFile(plugins[0]+"_SHA256SUM", filepath.Join(pluginCopy, filepath.Base(plugins[0])+"_SHA256SUM"), 0o644)
	out := filepath.Join(base, "outs", "out")
	installOut := filepath.Join(base, "outs", "install")
	tmpl := accTemplate([]accSource{
		{"nonix", accStoreOnly(small, "efi", false, out, sub, key.pub)},
		{"nonix_install", install(installOut, sub, key.pub)},
	})
	if err := os.WriteFile(filepath.Join(base, "work", "build.pkr.hcl"), []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range append(nobodyDirs, base) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if d != base {
			if err := os.Chown(d, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
	}

	// The host's Nix binaries outside /nix, covered by /dev/null.
	var hide []string
	for _, tool := range []string{"nix", "nix-store", "nix-build", "nix-instantiate", "nix-env", "nix-shell",
		"nix-daemon", "nix-copy-closure", "nix-collect-garbage", "nix-hash", "nix-prefetch-url", "nix-channel"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		if p, err = filepath.EvalSymlinks(p); err == nil && !strings.HasPrefix(p, "/nix/") && !slices.Contains(hide, p) {
			hide = append(hide, p)
		}
	}
	script := `set -e
mount -t tmpfs -o mode=0755,size=1m no-nix /nix
for f in "$@"; do mount --bind /dev/null "$f"; done
if [ -n "$(ls -A /nix)" ]; then echo "/nix is not empty" >&2; exit 97; fi
cd "$BASE/work"
exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
  env -i HOME="$BASE/home" PATH="$BASE/bin" TMPDIR="$BASE/tmp" PACKER_PLUGIN_PATH="$BASE/plugins" \
  CHECKPOINT_DISABLE=1 PACKER_NO_COLOR=1 \
  ID="$ID" LS="$LS" /bin/sh -c 'for t in nix nix-store nix-build; do if command -v $t >/dev/null; then echo "$t is on PATH" >&2; exit 98; fi; done
if [ -e /nix/store ] || [ -e /nix/var ]; then echo "/nix is visible" >&2; exit 99; fi
echo "as $($ID -u):$($ID -g), /nix holds [$($LS -A /nix)], PATH=$PATH"
unset ID LS
exec "$0" build -color=false build.pkr.hcl' "$BASE/packer"
`
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh"}, hide...)...)
	cmd.Env = append(os.Environ(), "BASE="+base)
	for _, tool := range []string{"id", "ls"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skipf("%s not on PATH", tool)
		}
		cmd.Env = append(cmd.Env, strings.ToUpper(tool)+"="+p)
	}
	begin := time.Now()
	output, err := cmd.CombinedOutput()
	t.Logf("packer build without Nix (hidden: /nix, %v): %s\n%s", hide, time.Since(begin).Round(time.Millisecond), tail(string(output), 1500))
	if err != nil {
		t.Fatalf("packer build without Nix: %v", err)
	}
	if !strings.Contains(string(output), "as 65534:65534, /nix holds [], PATH="+filepath.Join(base, "bin")+"\n") || !strings.Contains(string(output), "nonix: Downloading 6 NARs") {
		t.Errorf("the build did not run as nobody with an empty /nix, or did not download the closure")
	}
	if got, want := imagecheck.SHA256File(t, filepath.Join(out, "nixos.img")), imagecheck.SHA256File(t, filepath.Join(localOut, "nixos.img")); got != want {
		t.Errorf("image built without Nix: sha256 %s; from the host's store %s", got, want)
	}
	if !strings.Contains(string(output), "nonix_install: Powering the installer VM off") {
		t.Errorf("the install without Nix did not run its installer VM")
	}
	if got, want := imagecheck.SHA256File(t, filepath.Join(installOut, "nixos.img")), imagecheck.SHA256File(t, filepath.Join(localInstall, "nixos.img")); got != want {
		t.Errorf("image installed without Nix: sha256 %s; from the host's store %s", got, want)
	}
	accRequireEmpty(t, filepath.Join(base, "tmp"), "nobody's TMPDIR after the build")
	for _, o := range []string{out, installOut} {
		if ents := dirEntries(t, o); len(ents) != 1 || ents[0] != "nixos.img" {
			t.Errorf("output directory %s holds %v", o, ents)
		}
	}
}
