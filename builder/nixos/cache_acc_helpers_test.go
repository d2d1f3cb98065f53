package nixos

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/acctest"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// Store-only images straight from binary caches (issue 13), through the real
// packer binary: caches written by the real `nix copy --to file://…` (xz,
// Nix's default, and zstd), signed with a key from
// `nix-store --generate-binary-cache-key`, served by the test itself over
// HTTP on 127.0.0.1 or read as file://.

// accKey is a binary cache signing key pair.
type accKey struct{ name, sec, pub string }

// accRequire skips unless acceptance tests are asked for (before any cache is
// made) and Nix is here to make the caches.
func accRequire(t *testing.T) {
	t.Helper()
	if os.Getenv(acctest.TestEnvVar) == "" {
		t.Skipf("acceptance test: set %s=1 (make testacc)", acctest.TestEnvVar)
	}
	accRequireNix(t)
}

func accRequireNix(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"nix", "nix-store"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("making binary caches needs %s (not on PATH)", tool)
		}
	}
}

// accNewKey makes a key pair with nix-store --generate-binary-cache-key.
func accNewKey(t *testing.T, name string) accKey {
	t.Helper()
	dir := t.TempDir()
	k := accKey{name: name, sec: filepath.Join(dir, "sec")}
	pub := filepath.Join(dir, "pub")
	cachetest.Output(t, "nix-store", "--generate-binary-cache-key", name, k.sec, pub)
	b, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	k.pub = strings.TrimSpace(string(b))
	return k
}

// accNixCopy writes the closures of roots into a new binary cache directory
// with `nix copy --to 'file://DIR?compression=C&secret-key=F'`.
func accNixCopy(t *testing.T, key accKey, compression string, roots ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cache-"+compression)
	cachetest.Output(t, "nix", append([]string{"--extra-experimental-features", "nix-command", "copy", "--to",
		"file://" + dir + "?compression=" + compression + "&secret-key=" + key.sec}, roots...)...)
	return dir
}

// accCopyCache copies a cache directory, for tampering.
func accCopyCache(t *testing.T, src string) string { return cachetest.Copy(t, src) }

// accNarInfoFile is the narinfo file of storePath in a cache directory.
func accNarInfoFile(dir, storePath string) string {
	return filepath.Join(dir, path.Base(storePath)[:32]+".narinfo")
}

// accNarInfoField is one field of storePath's narinfo ("URL", "NarHash", ...).
func accNarInfoField(t *testing.T, dir, storePath, field string) string {
	t.Helper()
	b, err := os.ReadFile(accNarInfoFile(dir, storePath))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+": "); ok {
			return v
		}
	}
	t.Fatalf("the narinfo of %s has no %s:\n%s", storePath, field, b)
	return ""
}

// accEditNarInfo rewrites storePath's narinfo line by line; edit returns ""
// to drop a line.
func accEditNarInfo(t *testing.T, dir, storePath string, edit func(line string) string) {
	cachetest.EditNarInfo(t, accNarInfoFile(dir, storePath), edit)
}

// accSource is one nixos-image source of a template built with others.
type accSource struct{ name, body string }

// accTemplate builds every source in one packer build (Packer runs them in
// parallel).
func accTemplate(sources []accSource) string {
	var b strings.Builder
	b.WriteString(`packer {
  required_plugins {
    nixos = {
      source  = "github.com/packer-plugin-nixos/nixos"
      version = ">= 0.1.0"
    }
  }
}
`)
	var names []string
	for _, s := range sources {
		fmt.Fprintf(&b, "\nsource \"nixos-image\" %q {\n%s\n}\n", s.name, s.body)
		names = append(names, fmt.Sprintf("%q", "source.nixos-image."+s.name))
	}
	fmt.Fprintf(&b, "\nbuild {\n  sources = [%s]\n}\n", strings.Join(names, ", "))
	return b.String()
}

// accStoreOnly is a store-only source body; sub and pubs (if sub is not "")
// make it read the closure from that binary cache.
func accStoreOnly(roots []string, layout string, hybridMBR bool, out, sub string, pubs ...string) string {
	body := fmt.Sprintf(`  only_nix_store       = true
  store_paths          = %s
  partition_table_type = %q
  hybrid_mbr           = %v
  additional_space     = "16M"
  output_directory     = %q`, hclList(roots), layout, hybridMBR, out)
	return body + accCacheKeys(sub, pubs)
}

// accCacheKeys are the source lines that read from the binary cache sub
// with the trusted keys pubs; "" when sub is "" (the host's store).
func accCacheKeys(sub string, pubs []string) string {
	if sub == "" {
		return ""
	}
	return fmt.Sprintf(`
  substituters         = [%q]
  trusted_public_keys  = %s`, sub, hclList(pubs))
}

// accSetTmpdir points TMPDIR at a new empty directory for the builds (after
// the test's own temporary directories are made) and returns it.
func accSetTmpdir(t *testing.T) string {
	t.Helper()
	// Short, not under t.TempDir(), whose path holds the test's name: the
	// installer VM's socket must fit in it, or it would go to /tmp instead.
	tmp, err := os.MkdirTemp("/tmp", "acc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	return tmp
}

// accRequireEmpty fails unless dir holds nothing.
func accRequireEmpty(t *testing.T, dir, what string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("%s: %s is not empty: %v", what, dir, names)
	}
}

// accLayouts are the builder's store-only layouts (TestAccStoreOnlyLayouts').
var accLayouts = []struct {
	name, layout string
	mbr          bool
}{
	{"none", "none", false},
	{"legacy", "legacy", false},
	{"legacy_gpt", "legacy+gpt", false},
	{"efi", "efi", false},
	{"efixbootldr", "efixbootldr", false},
	{"hybrid", "hybrid", false},
	{"hybrid_mbr", "hybrid", true},
}

// accCheckStoreOnly runs the store-only oracles on img: nparts partitions,
// e2fsck on the root, its label and UUID, the tree file for file against the
// host store, the registration loaded and verified by Nix, and a file read
// back by go-diskfs.
func accCheckStoreOnly(t *testing.T, img string, nparts int, closure []string) {
	t.Helper()
	parts := imagecheck.Partitions(t, img)
	if len(parts) != nparts {
		t.Fatalf("%s: %d partitions, want %d: %+v", img, len(parts), nparts, parts)
	}
	root := parts[len(parts)-1]
	fs := imagecheck.FS{Image: img, Offset: root.Start}
	imagecheck.Fsck(t, fs)
	sb := dumpe2fs(t, fs)
	for _, want := range []string{"Filesystem volume name:   nix-store", "Filesystem UUID:          f222513b-ded1-49fa-b591-20ce86a2fe7f"} {
		if !strings.Contains(sb, want) {
			t.Errorf("superblock lacks %q", want)
		}
	}
	dir := imagecheck.Extract(t, fs)
	imagecheck.CompareTree(t, fs, dir, closure)
	imagecheck.VerifyRegistration(t, dir, closure)
	imagecheck.ReadWithDiskfs(t, fs, root.Size, []string{firstRegularFile(t, closure[0])})
}

// accBuildError is the error packer gives for the build, whitespace runs as
// one space.
func accBuildError(log string) string {
	const mark = "errored after "
	for _, l := range strings.Split(log, "\n") {
		if i := strings.Index(l, mark); i >= 0 && strings.Contains(l, "Build '") {
			return strings.Join(strings.Fields(accANSI.ReplaceAllString(l[i:], "")), " ")
		}
	}
	return "(no \"errored after\" line in the log)"
}

var accANSI = regexp.MustCompile("\x1b\\[[0-9;]*m")

// accErrorLines keeps the log lines that carry the build's messages.
func accErrorLines(log string) string {
	var keep []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "ui error") || strings.Contains(l, "ui:") || strings.Contains(l, "rror") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
