package nixos

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// What the step tests share: a UI that keeps what it is told, a state bag,
// prepared configurations and a small closure of real files.

var errFake = errors.New("fake failure")

// testUI keeps what the steps say and the errors they report.
type testUI struct {
	packersdk.Ui
	out, errs *bytes.Buffer
}

func newTestUI() *testUI {
	out, errs := new(bytes.Buffer), new(bytes.Buffer)
	return &testUI{
		Ui:  &packersdk.BasicUi{Reader: new(bytes.Buffer), Writer: out, ErrorWriter: errs, PB: &packersdk.NoopProgressTracker{}},
		out: out, errs: errs,
	}
}

// newState is the state bag as Builder.Run starts it, without drivers:
// each test puts the fakes its step reaches.
func newState(c *Config) (*multistep.BasicStateBag, *testUI) {
	ui := newTestUI()
	state := new(multistep.BasicStateBag)
	state.Put("config", c)
	state.Put("ui", ui)
	return state, ui
}

// requireHalt checks that a step halted the build the way Packer reports
// it: an error saying want in the state bag, and the same told to the user.
func requireHalt(t *testing.T, action multistep.StepAction, state multistep.StateBag, ui *testUI, want string) {
	t.Helper()
	if action != multistep.ActionHalt {
		t.Fatalf("the step went on (%v); want it to halt with %q", action, want)
	}
	err, ok := state.GetOk("error")
	if !ok {
		t.Fatal("the step halted without an error in the state bag")
	}
	if !strings.Contains(err.(error).Error(), want) {
		t.Fatalf("error %q; want it to say %q", err, want)
	}
	if !strings.Contains(ui.errs.String(), want) {
		t.Errorf("the user was told %q; want %q", ui.errs, want)
	}
}

// requireContinue checks that a step went on without an error.
func requireContinue(t *testing.T, action multistep.StepAction, state multistep.StateBag) {
	t.Helper()
	if err, ok := state.GetOk("error"); ok || action != multistep.ActionContinue {
		t.Fatalf("the step did not go on (%v): %v", action, err)
	}
}

// prepared is a configuration through Config.Prepare, as Packer gives it:
// store-only unless raw says only_nix_store = false, writing to a new
// temporary directory. Install mode gets /bin/sh as its QEMU, which
// Prepare only looks up: the tests' VMs are fakes.
func prepared(t *testing.T, raw map[string]interface{}) *Config {
	t.Helper()
	t.Setenv("SOURCE_DATE_EPOCH", "")
	all := map[string]interface{}{"only_nix_store": true, "output_directory": t.TempDir()}
	if raw["only_nix_store"] == false {
		all["system"] = "/nix/store/00000000000000000000000000000000-nixos-system"
		all["qemu_binary"] = "/bin/sh"
		all["accelerator"] = "tcg"
	} else {
		all["store_paths"] = []string{"/nix/store/00000000000000000000000000000000-hello"}
	}
	for k, v := range raw {
		all[k] = v
	}
	c := &Config{}
	if _, err := c.Prepare(all); err != nil {
		t.Fatal(err)
	}
	return c
}

// testClosure is a closure of two store paths made of real files under a
// temporary directory (the host-side steps only read them): the first
// holds bin/hello.
func testClosure(t *testing.T) []nixstore.PathInfo {
	t.Helper()
	store := t.TempDir()
	var infos []nixstore.PathInfo
	for _, path := range []struct{ name, file, content string }{ // sorted, as the database gives them
		{"11111111111111111111111111111111-hello", "bin/hello", "#!/bin/sh\necho hello\n"},
		{"22222222222222222222222222222222-data", "share/data.txt", strings.Repeat("data\n", 1000)},
	} {
		p := filepath.Join(store, path.name)
		if err := os.MkdirAll(filepath.Dir(filepath.Join(p, path.file)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, path.file), []byte(path.content), 0o755); err != nil {
			t.Fatal(err)
		}
		infos = append(infos, nixstore.PathInfo{Path: p, NarHash: "sha256:" + strings.Repeat("0", 64), NarSize: 4096})
	}
	return infos
}

// testToplevel is a directory that passes for a NixOS system.
func testToplevel(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"bin/switch-to-configuration", "kernel", "activate"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// testLayout is a disk layout of type typ with a small root partition.
func testLayout(t *testing.T, typ disk.Type) *disk.Layout {
	t.Helper()
	l, err := disk.Plan(disk.Options{Type: typ, RootSize: 16 << 20, Seed: []byte("test")})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// exists says whether p is there, following no link.
func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
