package nixos

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/acc"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/builder/nixstore"
)

// template is a store-only nixos-image source with the given body lines.
func template(name, body string) string {
	return fmt.Sprintf(`packer {
  required_plugins {
    nixos = {
      source  = "github.com/packer-plugin-nixos/nixos"
      version = ">= 0.1.0"
    }
  }
}

source "nixos-image" %q {
%s
}

build {
  sources = ["source.nixos-image.%s"]
}
`, name, body, name)
}

// hclList renders store paths as an HCL list.
func hclList(paths []string) string {
	q := make([]string, len(paths))
	for i, p := range paths {
		q[i] = fmt.Sprintf("%q", p)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// runPacker builds a nixos-image template with the real packer binary.
func runPacker(t *testing.T, name, tmpl string, extraArgs ...string) acc.Result {
	t.Helper()
	return acc.Run(t, name, "nixos-image", tmpl, extraArgs...)
}

func tail(s string, n int) string { return acc.Tail(s, n) }

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

func sha256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
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
