package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The rules of docs/design.md that the import graph and the file tree can
// check: a change that breaks one fails here, not in a later review.

const module = "github.com/packer-plugin-nixos/packer-plugin-nixos/"

type goPackage struct {
	ImportPath string
	Dir        string
	Imports    []string // production imports only: tests may use test support
	GoFiles    []string
	TestGoFiles,
	XTestGoFiles []string
}

func listPackages(t *testing.T) []goPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		p.ImportPath = strings.TrimPrefix(p.ImportPath, module)
		for i, imp := range p.Imports {
			p.Imports[i] = strings.TrimPrefix(imp, module)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages; expected the whole module", len(pkgs))
	}
	return pkgs
}

func under(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }

// TestArchitectureImports: test support stays out of production code, the
// trusted writers and the untrusted readers never import each other, and the
// Packer components share code only through internal/.
func TestArchitectureImports(t *testing.T) {
	components := []string{"builder", "provisioner", "post-processor"}
	component := func(p string) string {
		for _, c := range components {
			if under(p, c) {
				parts := strings.SplitN(p, "/", 3)
				if len(parts) >= 2 {
					return parts[0] + "/" + parts[1]
				}
			}
		}
		return ""
	}
	writers := []string{"internal/fs", "internal/disk"}
	readers := []string{"internal/normalize"}
	inAny := func(p string, dirs []string) bool {
		for _, d := range dirs {
			if under(p, d) {
				return true
			}
		}
		return false
	}
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			// cmd/bench is a development tool: it measures on the fixtures.
			if under(imp, "internal/testkit") && !under(p.ImportPath, "internal/testkit") && !under(p.ImportPath, "cmd") {
				t.Errorf("%s (production code) imports test support %s", p.ImportPath, imp)
			}
			if inAny(p.ImportPath, writers) && inAny(imp, readers) || inAny(p.ImportPath, readers) && inAny(imp, writers) {
				t.Errorf("%s imports %s: writers of our own data and readers of untrusted bytes share only internal/spec", p.ImportPath, imp)
			}
			if c := component(p.ImportPath); c != "" && component(imp) != "" && component(imp) != c {
				t.Errorf("%s imports another Packer component, %s: shared code belongs under internal/", p.ImportPath, imp)
			}
		}
	}
}

// TestArchitecturePluginDeps: the plugin binary links no test support, and
// not the SDK's commonsteps, whose go-getter getters bring S3 and GCS clients (16 MB
// of binary, mapped into every build: internal/packerx/steprun instead).
func TestArchitecturePluginDeps(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, module+"builder/nixos") {
		t.Fatalf("go list -deps . does not list builder/nixos: %q", deps)
	}
	for _, d := range deps {
		if under(strings.TrimPrefix(d, module), "internal/testkit") {
			t.Errorf("the plugin binary links test support: %s", d)
		}
		if d == "github.com/hashicorp/packer-plugin-sdk/multistep/commonsteps" {
			t.Errorf("the plugin binary links %s (use internal/packerx/steprun)", d)
		}
	}
}

// TestArchitectureFileLength: no hand-written Go file is over 500 lines; a
// longer one is split where its parts have separate jobs.
func TestArchitectureFileLength(t *testing.T) {
	const limit = 500
	for _, p := range listPackages(t) {
		files := append(append(append([]string{}, p.GoFiles...), p.TestGoFiles...), p.XTestGoFiles...)
		for _, name := range files {
			path := filepath.Join(p.Dir, name)
			n, generated := countLines(t, path)
			if !generated && n > limit {
				t.Errorf("%s: %d lines (limit %d)", path, n, limit)
			}
		}
	}
}

// countLines also reports whether the file carries Go's "Code generated"
// marker (packer-sdc's HCL2 specs do).
func countLines(t *testing.T, path string) (int, bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, generated := 0, false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		n++
		if strings.HasPrefix(sc.Text(), "// Code generated ") && strings.HasSuffix(sc.Text(), " DO NOT EDIT.") {
			generated = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n, generated
}

// TestWebDocsListEveryComponent: every component main.go registers has its
// page under .web-docs/components and its entry in metadata.hcl, which the
// Packer integrations portal reads.
func TestWebDocsListEveryComponent(t *testing.T) {
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	meta, err := os.ReadFile(filepath.Join(".web-docs", "metadata.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{"RegisterBuilder": "builder", "RegisterProvisioner": "provisioner", "RegisterPostProcessor": "post-processor"}
	n := 0
	for _, line := range strings.Split(string(src), "\n") {
		for fn, kind := range kinds {
			_, rest, ok := strings.Cut(line, "pps."+fn+"(\"")
			if !ok {
				continue
			}
			slug, _, _ := strings.Cut(rest, "\"")
			n++
			if _, err := os.Stat(filepath.Join(".web-docs", "components", kind, slug, "README.md")); err != nil {
				t.Errorf("%s %q has no page: %v (make generate)", kind, slug, err)
			}
			entry := fmt.Sprintf("type = %q\n    name = \"nixos-%s\"\n    slug = %q", kind, slug, slug)
			if !strings.Contains(string(meta), entry) {
				t.Errorf("metadata.hcl lacks the %s nixos-%s (make generate)", kind, slug)
			}
		}
	}
	if n < 4 {
		t.Fatalf("found %d registered components in main.go, expected 4 or more", n)
	}
}
