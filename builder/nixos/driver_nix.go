package nixos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// NixDriver runs nix, nix-build and nix-store.
type NixDriver struct{}

func (NixDriver) BuildFlake(ctx context.Context, ref, name string) (string, error) {
	installable := fmt.Sprintf("%s#nixosConfigurations.%q.config.system.build.toplevel", ref, name)
	out, err := runNix(ctx, "nix", "--extra-experimental-features", "nix-command flakes",
		"build", "--no-link", "--json", installable)
	if err != nil {
		return "", err
	}
	var results []struct {
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal(out, &results); err != nil || len(results) != 1 || results[0].Outputs["out"] == "" {
		return "", fmt.Errorf("nix build %s: unexpected output %q", installable, out)
	}
	return results[0].Outputs["out"], nil
}

func (NixDriver) BuildFile(ctx context.Context, file, attr string) (string, error) {
	out, err := runNix(ctx, "nix-build", "--no-out-link", file, "-A", attr)
	if err != nil {
		return "", err
	}
	paths := strings.Fields(string(out))
	if len(paths) != 1 {
		return "", fmt.Errorf("nix-build %s -A %s gave %d paths, want one system", file, attr, len(paths))
	}
	return paths[0], nil
}

func runNix(ctx context.Context, bin string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	// Cancelled, nix is killed; a child of its that holds the output pipes
	// (git or ssh fetching a flake input) must not hold the step too.
	cmd.WaitDelay = 2 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 4000 {
			msg = "..." + msg[len(msg)-4000:]
		}
		return nil, fmt.Errorf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, msg)
	}
	return out, nil
}

func (NixDriver) AddToStore(ctx context.Context, dir string) (string, error) {
	out, err := runNix(ctx, "nix-store", "--add", dir)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}
