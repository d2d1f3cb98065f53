package nixos

import (
	"context"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
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
	state.Put("communicator", &storeComm{dir: dir})
	state.Put("uploads_dir", dir)
	return multistep.ActionContinue
}

func (s *stepStoreComm) Cleanup(multistep.StateBag) {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}
