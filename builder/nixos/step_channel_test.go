package nixos

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testChannel is a nixpkgs checkout: a file and a .git directory.
func testChannel(t *testing.T) *Config {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "default.nix"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	return prepared(t, map[string]interface{}{"only_nix_store": false, "channel": src})
}

func TestStepChannelHaltsWhenTheCopyFails(t *testing.T) {
	c := testChannel(t)
	state, ui := newState(c)
	nix := &fakeNix{}
	state.Put("nix", nix)
	state.Put("cp", fakeCopier{err: errFake})
	requireHalt(t, (&stepChannel{}).Run(context.Background(), state), state, ui, "channel: copying "+c.Channel+": fake failure")
	if nix.added != "" {
		t.Errorf("%s was added to the store after a failed copy", nix.added)
	}
}

func TestStepChannelHaltsWhenTheStoreRefuses(t *testing.T) {
	state, ui := newState(testChannel(t))
	state.Put("nix", &fakeNix{addErr: errFake})
	state.Put("cp", fakeCopier{})
	requireHalt(t, (&stepChannel{}).Run(context.Background(), state), state, ui, "channel: fake failure")
	if _, ok := state.GetOk("channel"); ok {
		t.Error("a channel was put in the state bag")
	}
}

// What goes into the store is nixos-channel/nixos, without .git, with
// nixos/nixpkgs -> . ; the staging directory is gone once Run returns.
func TestStepChannelAddsTheChannel(t *testing.T) {
	state, _ := newState(testChannel(t))
	nix := &fakeNix{addedAs: "/nix/store/33333333333333333333333333333333-nixos-channel"}
	state.Put("nix", nix)
	state.Put("cp", fakeCopier{})
	step := &stepChannel{}
	requireContinue(t, step.Run(context.Background(), state), state)
	step.Cleanup(state)
	if filepath.Base(nix.added) != channelName {
		t.Errorf("added %s; want a directory named %s", nix.added, channelName)
	}
	want := map[string]string{"nixos": "", "nixos/default.nix": "", "nixos/nixpkgs": "."}
	if len(nix.snapshot) != len(want) {
		t.Errorf("added %v; want %v", nix.snapshot, want)
	}
	for p, link := range want {
		if got, ok := nix.snapshot[p]; !ok || got != link {
			t.Errorf("added %s: %q, present %v; want %q", p, got, ok, link)
		}
	}
	if exists(nix.added) {
		t.Errorf("the staging directory %s is left behind", nix.added)
	}
	if got := state.Get("channel"); got != nix.addedAs {
		t.Errorf("channel %v; want %s", got, nix.addedAs)
	}
}

// copy_channel = false adds nothing.
func TestStepChannelSkippedWithoutCopyChannel(t *testing.T) {
	state, ui := newState(prepared(t, map[string]interface{}{"only_nix_store": false}))
	nix := &fakeNix{}
	state.Put("nix", nix)
	requireContinue(t, (&stepChannel{}).Run(context.Background(), state), state)
	if _, ok := state.GetOk("channel"); ok || nix.added != "" || strings.Contains(ui.out.String(), "channel") {
		t.Error("a channel was added without copy_channel")
	}
}
