package nixos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func prepare(t *testing.T, raw map[string]interface{}) (*Config, error) {
	t.Helper()
	c := &Config{}
	_, err := c.Prepare(raw)
	return c, err
}

func TestPrepareDefaults(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	c, err := prepare(t, map[string]interface{}{
		"only_nix_store":    true,
		"store_paths":       []string{"/nix/store/ph3wwanxydp5pg3ja6ids1q381g8kbcd-a"},
		"packer_build_name": "b",
	})
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]interface{}{
		"disk_size":            {c.DiskSize, "auto"},
		"additional_space":     {c.additionalBytes, int64(512 << 20)},
		"boot_size":            {c.bootBytes, int64(256 << 20)},
		"partition_table_type": {c.PartitionTableType, "legacy"},
		"fs_type":              {c.FSType, "ext4"},
		"label":                {c.Label, "nix-store"},
		"root_fs_uuid":         {c.RootFSUUID, DefaultRootGUID},
		"root_partition_guid":  {c.RootPartitionGUID, DefaultRootGUID},
		"deterministic":        {*c.Deterministic, true},
		"source_date_epoch":    {c.epoch, int64(1)},
		"format":               {c.Format, "raw"},
		"image_name":           {c.ImageFile(), "nixos.img"},
		"output_directory":     {c.OutputDir, "output-b"},
	}
	for key, v := range checks {
		if v[0] != v[1] {
			t.Errorf("%s defaults to %v, want %v", key, v[0], v[1])
		}
	}
}

func TestPrepareEpochFromEnvironment(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	c, err := prepare(t, map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"}})
	if err != nil || c.epoch != 1700000000 {
		t.Fatalf("epoch %d, err %v", c.epoch, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := prepare(t, map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"}}); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Fatalf("a bad SOURCE_DATE_EPOCH gave %v", err)
	}
}

// The ova_* keys' limits, each named.
func TestPrepareOVA(t *testing.T) {
	for _, tc := range []struct {
		key   string
		value interface{}
		want  string
	}{
		{"ova_cpus", 500, "ova_cpus: 500 is not allowed; allowed: 1 to 128"},
		{"ova_memory", 16, "ova_memory: 16 MiB is not allowed; allowed: 64 to 4194304"},
		{"ova_firmware", "uefi", `ova_firmware: "uefi" is not allowed; allowed: bios, efi`},
	} {
		raw := map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"}, "format": "ova", tc.key: tc.value}
		if _, err := prepare(t, raw); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s = %v: got %v, want %q", tc.key, tc.value, err, tc.want)
		}
	}
	// Defaults: 2 CPUs, 2 GiB, the firmware the layout boots with.
	for layout, fw := range map[string]string{"efi": "efi", "efixbootldr": "efi", "legacy": "bios", "hybrid": "bios"} {
		c, err := prepare(t, map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"}, "format": "ova", "partition_table_type": layout})
		if err != nil {
			t.Fatal(err)
		}
		if c.OVACPUs != 2 || c.OVAMemory != 2048 || c.OVAFirmware != fw {
			t.Errorf("%s: %d CPUs, %d MiB, %s; want 2, 2048, %s", layout, c.OVACPUs, c.OVAMemory, c.OVAFirmware, fw)
		}
	}
}

// Each bad value is reported with its key; all of them at once.
func TestPrepareErrors(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	cases := []struct {
		key   string
		value interface{}
		want  string
	}{
		{"flake", ".#x", "flake: only for install mode"},
		{"mem_size", 512, "mem_size: only for install mode"},
		{"store_paths", []string{"/usr/bin"}, `store_paths: "/usr/bin" is not a store path`},
		{"additional_paths", []string{"/nix/store/"}, `additional_paths: "/nix/store/" is not a store path`},
		{"system", "/nix/store/abc-x/bin", `system: "/nix/store/abc-x/bin" is not a store path`},
		{"disk_size", "12Q", `disk_size: "12Q" is not "auto" or a size`},
		{"disk_size", "0", `disk_size: "0" is not "auto" or a size`},
		{"additional_space", "lots", `additional_space: "lots" is not a size`},
		{"boot_size", "512K", `boot_size: "512K" is not a size of at least 1M`},
		{"partition_table_type", "gpt", `partition_table_type: unknown partition table type "gpt": allowed values are`},
		{"hybrid_mbr", true, `hybrid_mbr: only allowed with partition_table_type = "hybrid", not "legacy"`},
		{"fs_type", "xfs", `fs_type: "xfs" is not supported; allowed: ext4`},
		{"label", "seventeen-bytes-x", `label: "seventeen-bytes-x" is 17 bytes long`},
		{"root_fs_uuid", "F222513B", `root_fs_uuid: "F222513B" is not a UUID`},
		{"root_partition_guid", "zz", `root_partition_guid: "zz" is not a GUID`},
		{"source_date_epoch", -1, `source_date_epoch: -1 is outside`},
		{"format", "qed", `format: "qed" is not a known format; allowed: azure, gce, ova, qcow2, qcow2-compressed, raw, vdi, vhdx, vmdk, vmdk-stream, vpc`},
		{"ova_cpus", 4, `ova_cpus: only for format = "ova"`},
		{"compression", "lz4", `compression: "lz4" is not allowed; allowed: zlib, zstd`},
		{"image_name", "../x", `image_name: "../x" must be a plain file name`},
	}
	all := map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"}}
	for _, tc := range cases {
		raw := map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"}}
		raw[tc.key] = tc.value
		_, err := prepare(t, raw)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s = %v: got %v, want an error containing %q", tc.key, tc.value, err, tc.want)
		}
		if tc.key != "disk_size" && tc.key != "flake" && tc.key != "mem_size" {
			all[tc.key] = tc.value
		}
	}
	_, err := prepare(t, all)
	if err == nil {
		t.Fatal("no error for many bad keys")
	}
	for _, tc := range cases {
		if tc.key != "disk_size" && tc.key != "flake" && tc.key != "mem_size" && !strings.Contains(err.Error(), tc.key+": ") {
			t.Errorf("the combined error does not name %s:\n%v", tc.key, err)
		}
	}
	if _, err := prepare(t, map[string]interface{}{"only_nix_store": true}); err == nil || !strings.Contains(err.Error(), "store_paths: at least one") {
		t.Errorf("no roots: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"0": 0, "512": 512 << 20, "512M": 512 << 20, "8G": 8 << 30, "1T": 1 << 40, "64K": 64 << 10, "2GiB": 2 << 30, "10MB": 10 << 20}
	for s, want := range good {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "M", "-1M", "1.5G", "8X", "99999999999T"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) accepted", s)
		}
	}
}

// Install mode: one way to name the system, and its own keys checked.
func TestPrepareInstallErrors(t *testing.T) {
	cases := []struct {
		raw  map[string]interface{}
		want string
	}{
		{map[string]interface{}{}, "system: install mode needs exactly one of system"},
		{map[string]interface{}{"system": "/nix/store/x-a", "flake": ".#a"}, "system: install mode needs exactly one of system"},
		{map[string]interface{}{"system": "/nix/store/x-a", "store_paths": []string{"/nix/store/y-b"}}, "store_paths: only for only_nix_store = true"},
		{map[string]interface{}{"flake": "nixos"}, `flake: "nixos" is not "<flake reference>#<configuration name>"`},
		{map[string]interface{}{"system": "/nix/store/x-a", "attribute": "a"}, "attribute: only with nix_file"},
		{map[string]interface{}{"system": "/nix/store/x-a", "mem_size": 64}, "mem_size: 64 MiB is outside 128..1048576"},
		{map[string]interface{}{"system": "/nix/store/x-a", "accelerator": "hvf"}, `accelerator: "hvf" is not allowed; allowed: auto, kvm, tcg`},
		{map[string]interface{}{"system": "/nix/store/x-a", "install_timeout": "-1s"}, "install_timeout: -1s is negative"},
		{map[string]interface{}{"system": "/nix/store/x-a", "qemu_binary": "qemu-nowhere"}, "qemu_binary: qemu-nowhere not found"},
		{map[string]interface{}{"system": "/nix/store/x-a", "touch_efi_vars": true}, `touch_efi_vars: only with a GPT layout (legacy+gpt, efi, efixbootldr, hybrid), not "legacy"`},
		{map[string]interface{}{"system": "/nix/store/x-a", "partition_table_type": "efi", "touch_efi_vars": true,
			"efi_firmware_code": "/nonexistent/OVMF_CODE.fd", "efi_firmware_vars": "/usr/share/OVMF/OVMF_VARS.fd"}, "efi_firmware_code: /nonexistent/OVMF_CODE.fd is not a readable firmware file"},
		{map[string]interface{}{"system": "/nix/store/x-a", "efi_firmware_vars": "/x"}, "efi_firmware_code: only used with touch_efi_vars = true"},
		{map[string]interface{}{"system": "/nix/store/x-a", "installer_kernel": "/nonexistent/bzImage"}, "installer_kernel: /nonexistent/bzImage is not a kernel image file"},
		{map[string]interface{}{"system": "/nix/store/x-a", "installer_modules": "/lib/modules"}, "installer_modules: only with installer_kernel"},
		{map[string]interface{}{"system": "/nix/store/x-a", "copy_channel": true}, "copy_channel: needs channel"},
		{map[string]interface{}{"system": "/nix/store/x-a", "channel": "/nonexistent/nixpkgs"}, "channel: /nonexistent/nixpkgs is not a directory"},
		{map[string]interface{}{"system": "/nix/store/x-a", "installer_kernel": "/proc/self/exe", "installer_modules": "/etc"}, "installer_modules: /etc holds no kernel modules"},
	}
	for _, tc := range cases {
		if _, err := prepare(t, tc.raw); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.raw, err, tc.want)
		}
	}
	c, err := prepare(t, map[string]interface{}{"nix_file": "system.nix"})
	if installModeReady && err != nil {
		t.Fatal(err)
	}
	if !installModeReady && (err == nil || !strings.Contains(err.Error(), "install mode (false) is not available")) {
		t.Fatalf("install mode is refused until ready: got %v", err)
	}
	if c.Attribute != "config.system.build.toplevel" || c.MemSize != 256 || c.Accelerator != "auto" || !*c.InstallBootloader || c.Label != "nixos" {
		t.Errorf("install defaults: %+v", c)
	}
}

// The binary cache keys: each bad value named with its key and what is
// allowed, all at once; none of them without substituters.
func TestPrepareCacheErrors(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	const key = "test-1:562trz/P0KiKmH7HDlwzjeI6T3X2+ZeKgTkMHWI3mwM="
	netrc := filepath.Join(t.TempDir(), "netrc")
	if err := os.WriteFile(netrc, []byte("machine cache.example.com login u password secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withSubs := func(kv ...interface{}) map[string]interface{} {
		raw := map[string]interface{}{"substituters": []string{"https://cache.example.com"}, "trusted_public_keys": []string{key}}
		for i := 0; i < len(kv); i += 2 {
			raw[kv[i].(string)] = kv[i+1]
		}
		return raw
	}
	cases := []struct {
		raw  map[string]interface{}
		want string
	}{
		{withSubs("substituters", []string{"ftp://cache.example.com"}), `substituters: "ftp://cache.example.com": scheme must be https, http or file; allowed: https://`},
		{withSubs("substituters", []string{"https://cache.example.com", "s3://bucket"}), `substituters: "s3://bucket": scheme must be`},
		{withSubs("substituters", []string{"file://relative/dir"}), `substituters: "file://relative/dir": want file:///absolute/dir`},
		{withSubs("substituters", []string{"https:///path"}), `substituters: "https:///path": no host`},
		{withSubs("trusted_public_keys", []string{"cache.nixos.org-1"}), `trusted_public_keys: "cache.nixos.org-1": public key is corrupt`},
		{withSubs("trusted_public_keys", []string{"k:bm90IGEga2V5"}), `trusted_public_keys: "k:bm90IGEga2V5": public key is corrupt`},
		{withSubs("trusted_public_keys", []string{}), "trusted_public_keys: require_sigs is true (the default) but no trusted_public_keys are given"},
		{withSubs("trusted_public_keys", []string{}, "require_sigs", true), "set require_sigs = false"},
		{withSubs("netrc_file", "/nonexistent/netrc"), "netrc_file: /nonexistent/netrc: no such file or directory; want a readable netrc file"},
		{withSubs("netrc_file", t.TempDir()), "netrc_file: "},
		{map[string]interface{}{"trusted_public_keys": []string{key}}, "trusted_public_keys: only with substituters"},
		{map[string]interface{}{"require_sigs": false}, "require_sigs: only with substituters"},
		{map[string]interface{}{"netrc_file": netrc}, "netrc_file: only with substituters"},
		{withSubs("stalled_download_timeout", -1), "stalled_download_timeout: -1 is outside 1..86400"},
		{withSubs("download_attempts", 101), "download_attempts: 101 is outside 1..100"},
		{map[string]interface{}{"stalled_download_timeout": 5}, "stalled_download_timeout: only with substituters"},
		{map[string]interface{}{"download_attempts": 2}, "download_attempts: only with substituters"},
		{withSubs("only_nix_store", false, "flake", ".#x"), "flake: cannot be used with substituters"},
		{withSubs("only_nix_store", false, "nix_file", "/x.nix", "attribute", "a"), "nix_file: cannot be used with substituters"},
		{withSubs("only_nix_store", false, "system", "/nix/store/x-sys", "channel", t.TempDir()), "channel: cannot be used with substituters"},
	}
	for _, tc := range cases {
		raw := map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"}}
		for k, v := range tc.raw {
			raw[k] = v
		}
		if _, err := prepare(t, raw); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.raw, err, tc.want)
		}
	}
	// All at once, each with its key.
	_, err := prepare(t, map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"},
		"substituters": []string{"ftp://x"}, "trusted_public_keys": []string{"bad"}, "netrc_file": "/nonexistent/netrc", "disk_size": "12Q"})
	for _, k := range []string{"substituters: ", "trusted_public_keys: ", "netrc_file: ", "disk_size: "} {
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("the combined error does not name %s:\n%v", k, err)
		}
	}

	// Good values: require_sigs defaults to true, and the client's settings are kept.
	c, err := prepare(t, map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"},
		"substituters":        []string{"file:///srv/cache", "https://cache.example.com/sub?priority=10", "http://127.0.0.1:8080"},
		"trusted_public_keys": []string{key}, "netrc_file": netrc})
	if err != nil {
		t.Fatal(err)
	}
	if !c.FromCache() || !*c.RequireSigs || c.cache.AcceptUnsigned || c.cache.NetrcFile != netrc || len(c.cache.Substituters) != 3 {
		t.Errorf("cache settings: require_sigs %v, %+v", *c.RequireSigs, c.cache)
	}
	if c.cache.StallTimeout != 0 || c.cache.Retries != 0 {
		t.Errorf("stall timeout and retries %v, %d: want the client's defaults", c.cache.StallTimeout, c.cache.Retries)
	}
	for attempts, retries := range map[int]int{1: -1, 2: 1, 10: 9} {
		c, err := prepare(t, map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"},
			"substituters": []string{"https://cache.example.com"}, "trusted_public_keys": []string{key},
			"stalled_download_timeout": 7, "download_attempts": attempts})
		if err != nil || c.cache.StallTimeout != 7*time.Second || c.cache.Retries != retries {
			t.Errorf("download_attempts = %d: %v, %v, %d retries, want 7s and %d", attempts, err, c.cache.StallTimeout, c.cache.Retries, retries)
		}
	}
	c, err = prepare(t, map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"},
		"substituters": []string{"https://cache.example.com"}, "require_sigs": false})
	if err != nil || !c.cache.AcceptUnsigned {
		t.Errorf("require_sigs = false without keys: %v, %+v", err, c.cache)
	}
	// Install mode reads a built system from the caches.
	if c, err := prepare(t, map[string]interface{}{"only_nix_store": false, "system": "/nix/store/00000000000000000000000000000000-sys",
		"substituters": []string{"https://cache.example.com"}, "trusted_public_keys": []string{key}}); err != nil || !c.FromCache() {
		t.Errorf("install mode with substituters: %v", err)
	}
	if c, err := prepare(t, map[string]interface{}{"only_nix_store": true, "store_paths": []string{"/nix/store/x-a"}}); err != nil || c.FromCache() || c.RequireSigs != nil {
		t.Errorf("without substituters: %v, from cache %v", err, c.FromCache())
	}
}
