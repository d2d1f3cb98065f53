// Package srchash names the sources an embedded agent was built from, so
// a test can tell an agent built from older sources (go build without go
// generate) from a current one. Only the generator and tests use it: it
// runs `go list`.
package srchash

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// AgentPkg is the agent's main package.
const AgentPkg = "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentbin/agent"

// Of hashes the Go files of every package of this module that pkg
// imports (itself included) when built for linux/goarch, by import path
// and name, and go.mod (the versions of the others), from the module root
// dir. Each architecture has its own hash: a file built only for one
// (_arm64.go, a build tag) changes only that agent.
func Of(dir, pkg, goarch string) (string, error) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.ImportPath}} {{.Dir}} {{join .GoFiles \" \"}}{{end}}{{end}}", pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+goarch, "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list %s: %v: %s", pkg, err, stderr.String())
	}
	h := sha256.New()
	files := []string{filepath.Join(dir, "go.mod")}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		for _, name := range f[2:] {
			files = append(files, filepath.Join(f[1], name))
		}
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.ToSlash(rel), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
