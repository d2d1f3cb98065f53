package nixos

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
)

func TestStepStoreCommHaltsWithoutATemporaryDirectory(t *testing.T) {
	state, ui := newState(prepared(t, nil))
	missing := filepath.Join(t.TempDir(), "missing")
	t.Setenv("TMPDIR", missing)
	requireHalt(t, (&stepStoreComm{}).Run(context.Background(), state), state, ui, missing+": no such file or directory")
	if _, ok := state.GetOk("communicator"); ok {
		t.Error("a communicator was put in the state bag")
	}
}

// The provisioners get a staging communicator and the store-only mode;
// Cleanup removes what they staged.
func TestStepStoreCommStagesUploads(t *testing.T) {
	state, _ := newState(prepared(t, nil))
	step := &stepStoreComm{}
	requireContinue(t, step.Run(context.Background(), state), state)
	comm, ok := state.Get("communicator").(*storeComm)
	if !ok || state.Get("store_comm") != comm || !exists(comm.dir) {
		t.Fatalf("communicator %#v; want the staging communicator, also as store_comm", state.Get("communicator"))
	}
	if got := state.Get("generated_data").(map[string]interface{})[stageops.GeneratedKey]; got != stageops.StoreOnly {
		t.Errorf("generated %s = %v; want %v", stageops.GeneratedKey, got, stageops.StoreOnly)
	}
	step.Cleanup(state)
	if exists(comm.dir) {
		t.Errorf("Cleanup left %s", comm.dir)
	}
}
