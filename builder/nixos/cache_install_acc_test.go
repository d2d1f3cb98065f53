package nixos

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

// accInstall is an install-mode source body (TCG); sub and pubs (if sub is
// not "") make it read the system and its closure from that binary cache.
func accInstall(system, layout, out, sub string, pubs ...string) string {
	body := fmt.Sprintf(`  system               = %q
  partition_table_type = %q
  additional_space     = "16M"
  accelerator          = "tcg"
  output_directory     = %q`, system, layout, out)
	return body + accCacheKeys(sub, pubs)
}

// Install mode straight from binary caches (issue 13): the GRUB-for-BIOS
// system from an xz cache over HTTP and the systemd-boot one from a zstd
// cache as file://, each built beside the same system from the host's
// store in one packer build. The host reads the system (its boot loader's
// targets, kernel, modules) from the NARs and writes the Nix database in
// Go; each image is byte-identical to the one from the host's store, and
// boots through its boot loader. Nothing is left in TMPDIR.
func TestAccCacheInstall(t *testing.T) {
	accRequire(t)
	bios := fixtures.Build(t, "system-bios")[0]
	efi := fixtures.Build(t, "system-efi")[0]
	key := accNewKey(t, "acc-cache-1")
	xzHTTP := cachetest.Serve(t, accNixCopy(t, key, "xz", bios), nil)
	zstdFile := "file://" + accNixCopy(t, key, "zstd", efi)
	outs := t.TempDir()
	tmp := accSetTmpdir(t)
	cases := []struct {
		name, system, layout, sub, firmware string
	}{
		{"legacy", bios, "legacy", xzHTTP, "bios"},
		{"efi", efi, "efi", zstdFile, "efi"},
	}
	var sources []accSource
	for _, c := range cases {
		sources = append(sources,
			accSource{c.name + "_local", accInstall(c.system, c.layout, filepath.Join(outs, c.name+"_local"), "")},
			accSource{c.name + "_cache", accInstall(c.system, c.layout, filepath.Join(outs, c.name+"_cache"), c.sub, key.pub)})
	}
	res := runPacker(t, "cache_install", accTemplate(sources))
	res.MustSucceed(t)
	for _, c := range cases {
		for _, want := range []string{
			c.name + "_cache: Reading the system from its NARs",
			c.name + "_cache: Activating the system",
		} {
			if !res.Has(want) {
				t.Errorf("the build output lacks %q", want)
			}
		}
		local := filepath.Join(outs, c.name+"_local", "nixos.img")
		img := filepath.Join(outs, c.name+"_cache", "nixos.img")
		if got, want := imagecheck.SHA256File(t, img), imagecheck.SHA256File(t, local); got != want {
			t.Errorf("%s: the image from the cache (sha256 %s) differs from the one from the host's store (%s)", c.name, got, want)
		}
		checkFilesystems(t, img, c.layout)
		line := packertest.BootImage(t, img, c.system, c.firmware)
		for _, want := range []string{"system=" + c.system, "marker=fixture-marker-v1", "firmware=" + c.firmware} {
			if !strings.Contains(line, want) {
				t.Errorf("%s: the booted system's report lacks %q:\n%s", c.name, want, line)
			}
		}
	}
	accRequireEmpty(t, tmp, "TMPDIR after the build")
}
