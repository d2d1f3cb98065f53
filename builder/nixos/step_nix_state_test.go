package nixos

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A failed database halts, and Cleanup removes what was prepared.
func TestStepNixStateHaltsWhenTheDatabaseFails(t *testing.T) {
	state, ui := newState(prepared(t, map[string]interface{}{"only_nix_store": false}))
	state.Put("closure", testClosure(t))
	state.Put("system", &toplevel{path: "/nix/store/55555555555555555555555555555555-system"})
	state.Put("nix-db", &fakeNixDB{err: errFake})
	step := &stepNixState{}
	requireHalt(t, step.Run(context.Background(), state), state, ui, "fake failure")
	if step.dir == "" || !exists(step.dir) {
		t.Fatalf("no state directory to clean up (%q)", step.dir)
	}
	step.Cleanup(state)
	if exists(step.dir) {
		t.Errorf("Cleanup left %s", step.dir)
	}
}

// The profiles nixos-install leaves: system -> system-1-link -> toplevel
// and root's channels, registered at source_date_epoch.
func TestStepNixStatePreparesTheProfiles(t *testing.T) {
	c := prepared(t, map[string]interface{}{"only_nix_store": false, "source_date_epoch": 1700000000})
	state, _ := newState(c)
	state.Put("closure", testClosure(t))
	system := "/nix/store/55555555555555555555555555555555-system"
	channel := "/nix/store/66666666666666666666666666666666-nixos-channel"
	state.Put("system", &toplevel{path: system})
	state.Put("channel", channel)
	db := &fakeNixDB{}
	state.Put("nix-db", db)
	step := &stepNixState{}
	requireContinue(t, step.Run(context.Background(), state), state)
	dir := state.Get("nix_state_dir").(string)
	if db.regTime != 1700000000 {
		t.Errorf("registered at %d; want source_date_epoch", db.regTime)
	}
	profiles := filepath.Join(dir, "nix/var/nix/profiles")
	for link, want := range map[string]string{
		"system": "system-1-link", "system-1-link": system,
		"per-user/root/channels": "channels-1-link", "per-user/root/channels-1-link": channel,
	} {
		if got, err := os.Readlink(filepath.Join(profiles, link)); err != nil || got != want {
			t.Errorf("%s -> %q (%v); want %q", link, got, err, want)
		}
	}
	step.Cleanup(state)
	if exists(dir) {
		t.Errorf("Cleanup left %s", dir)
	}
}
