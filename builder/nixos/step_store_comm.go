package nixos

import (
	"context"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
)

// stepStoreComm gives store-only provisioners a communicator that stages
// their uploads for the image.
type stepStoreComm struct{ dir string }

func (s *stepStoreComm) Run(_ context.Context, state multistep.StateBag) multistep.StepAction {
	dir, err := os.MkdirTemp("", "packer-nixos-uploads-")
	if err != nil {
		return halt(state, err)
	}
	s.dir = dir
	comm := &storeComm{dir: dir}
	state.Put("communicator", comm)
	state.Put("store_comm", comm)
	// Provisioners see the mode in their generated data: nixos-contents
	// works through staging operations here, through commands otherwise.
	state.Put("generated_data", map[string]interface{}{stageops.GeneratedKey: stageops.StoreOnly})
	return multistep.ActionContinue
}

func (s *stepStoreComm) Cleanup(multistep.StateBag) {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}
