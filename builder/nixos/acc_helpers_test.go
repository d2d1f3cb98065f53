package nixos

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

// template is a nixos-image source with the given body lines, built alone.
func template(name, body string) string { return packertest.Template(name, body, "") }

// hclList renders store paths as an HCL list.
func hclList(paths []string) string { return packertest.HCLList(paths) }

// runPacker builds a nixos-image template with the real packer binary.
func runPacker(t *testing.T, name, tmpl string, extraArgs ...string) packertest.Result {
	t.Helper()
	return packertest.Run(t, name, "nixos-image", tmpl, extraArgs...)
}

func tail(s string, n int) string { return packertest.Tail(s, n) }

func closureOf(t *testing.T, roots []string) []string {
	t.Helper()
	infos, err := (&nixstore.Store{Dir: "/nix/store"}).Closure(context.Background(), roots)
	if err != nil {
		t.Fatal(err)
	}
	paths := make([]string, len(infos))
	for i, info := range infos {
		paths[i] = info.Path
	}
	return paths
}

// dirEntries lists a directory's names, hidden ones included.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// firstRegularFile finds a regular file with content under a store path, to
// hash inside the guest.
func firstRegularFile(t *testing.T, root string) string {
	t.Helper()
	var found string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && found == "" && fi.Mode().IsRegular() && fi.Size() > 0 {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no regular file under %s", root)
	}
	return found
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
