package nixos

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
)

const rssChildEnv = "NIXOS_RSS_CHILD"

// The builder's memory does not grow with the closure: building from a
// 4 GiB closure peaks within 16 MiB of building from a 64 MiB one. Each
// build runs in a child process of its own, so its peak RSS is its own.
func TestPeakRSSFlatInClosureSize(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 4 GiB")
	}
	peak := func(fixture string) int64 {
		roots := fixtures.Build(t, fixture)
		cmd := exec.Command(os.Args[0], "-test.run=^TestRSSChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), rssChildEnv+"="+strings.Join(roots, ":")+"|"+filepath.Join(t.TempDir(), "out"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", fixture, err, out)
		}
		return cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
	}
	small, large := peak("tiny64"), peak("large4g")
	t.Logf("peak RSS: %d KiB for 64 MiB, %d KiB for 4 GiB", small>>10, large>>10)
	if large-small >= 16<<20 {
		t.Errorf("peak RSS grows with the closure: %d KiB for 64 MiB, %d KiB for 4 GiB", small>>10, large>>10)
	}
}

// TestRSSChild is the child of TestPeakRSSFlatInClosureSize: one store-only
// build, run in-process exactly as the plugin runs it.
func TestRSSChild(t *testing.T) {
	arg := os.Getenv(rssChildEnv)
	if arg == "" {
		t.Skip("only run as a child of TestPeakRSSFlatInClosureSize")
	}
	roots, out, _ := strings.Cut(arg, "|")
	b := &Builder{}
	if _, _, err := b.Prepare(map[string]interface{}{
		"only_nix_store":       true,
		"store_paths":          strings.Split(roots, ":"),
		"partition_table_type": "efi",
		"additional_space":     "0",
		"output_directory":     out,
	}); err != nil {
		t.Fatal(err)
	}
	ui := &packersdk.BasicUi{Reader: os.Stdin, Writer: os.Stdout, ErrorWriter: os.Stderr, PB: &packersdk.NoopProgressTracker{}}
	if _, err := b.Run(context.Background(), ui, &packersdk.MockHook{}); err != nil {
		t.Fatal(err)
	}
}
