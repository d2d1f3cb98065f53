package steprun

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// OutputDir makes the build's output directory. One that exists is an
// error unless -force, which deletes it first; a build that fails or is
// cancelled deletes the directory it made.
type OutputDir struct {
	Path  string
	Force bool

	made bool
}

func (s *OutputDir) Run(_ context.Context, state multistep.StateBag) multistep.StepAction {
	ui := state.Get("ui").(packersdk.Ui)
	if _, err := os.Lstat(s.Path); err == nil {
		if !s.Force {
			return halt(state, fmt.Errorf("output_directory %s exists: remove it, choose another, or run packer build -force to replace it", s.Path))
		}
		ui.Say(fmt.Sprintf("Deleting the previous output directory %s (-force)...", s.Path))
		if err := os.RemoveAll(s.Path); err != nil {
			return halt(state, fmt.Errorf("output_directory: %w", err))
		}
	}
	if err := os.MkdirAll(s.Path, 0o755); err != nil {
		return halt(state, fmt.Errorf("output_directory: %w", err))
	}
	s.made = true
	// Fail now, not after the image is written, if it is not writable.
	probe := filepath.Join(s.Path, ".packer-write-check")
	f, err := os.Create(probe)
	if err != nil {
		return halt(state, fmt.Errorf("output_directory %s is not writable: %w", s.Path, err))
	}
	f.Close()
	os.Remove(probe)
	return multistep.ActionContinue
}

func (s *OutputDir) Cleanup(state multistep.StateBag) {
	if !s.made {
		return
	}
	_, cancelled := state.GetOk(multistep.StateCancelled)
	_, halted := state.GetOk(multistep.StateHalted)
	if !cancelled && !halted {
		return
	}
	state.Get("ui").(packersdk.Ui).Say("Deleting the output directory " + s.Path + "...")
	if err := os.RemoveAll(s.Path); err != nil {
		log.Printf("removing the output directory: %v", err)
	}
}

// Provision runs the template's provisioners against the communicator a
// step before put in the state ("communicator"), with the build's
// generated data; when the build fails, its cleanup runs the
// error-cleanup-provisioner.
type Provision struct{}

func (s *Provision) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	return s.run(ctx, state, packersdk.HookProvision)
}

func (s *Provision) Cleanup(state multistep.StateBag) {
	if _, failed := state.GetOk("error"); failed {
		s.run(context.Background(), state, packersdk.HookCleanupProvision)
	}
}

// Hook data Packer documents for every builder; the ones this plugin has
// no value for say so, as the SDK's builders do.
const notImplemented = "ERR_%s_NOT_IMPLEMENTED_BY_BUILDER"

func hookData(state multistep.StateBag) map[string]interface{} {
	data := map[string]interface{}{}
	if g, ok := state.GetOk("generated_data"); ok {
		data = g.(map[string]interface{})
	}
	data["ID"] = fmt.Sprintf(notImplemented, "ID")
	if id, ok := state.GetOk("instance_id"); ok {
		data["ID"] = id
	}
	data["PackerRunUUID"] = os.Getenv("PACKER_RUN_UUID")
	data["PackerHTTPIP"] = fmt.Sprintf(notImplemented, "HTTP_IP")
	data["PackerHTTPPort"] = fmt.Sprintf(notImplemented, "HTTP_PORT")
	data["PackerHTTPAddr"] = fmt.Sprintf(notImplemented, "HTTP_ADDR")
	return data
}

func (s *Provision) run(ctx context.Context, state multistep.StateBag, hookType string) multistep.StepAction {
	hook := state.Get("hook").(packersdk.Hook)
	ui := state.Get("ui").(packersdk.Ui)
	comm, _ := state.Get("communicator").(packersdk.Communicator)
	data := hookData(state)
	state.Put("generated_data", data)
	if hookType == packersdk.HookCleanupProvision {
		ui.Say("Provisioning step had errors: Running the cleanup provisioner, if present...")
	}
	// The hook runs over RPC and may not watch ctx itself: stop waiting
	// as soon as the build is cancelled.
	errc := make(chan error, 1)
	go func() { errc <- hook.Run(ctx, hookType, ui, comm, data) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		log.Printf("provisioning cancelled: %v", ctx.Err())
		return multistep.ActionHalt
	}
	if err == nil {
		return multistep.ActionContinue
	}
	if hookType == packersdk.HookCleanupProvision {
		orig, _ := state.Get("error").(error)
		state.Put("error", fmt.Errorf("cleanup provisioner failed: %v (the build had failed with: %v)", err, orig))
	} else {
		state.Put("error", err)
	}
	return multistep.ActionHalt
}

func halt(state multistep.StateBag, err error) multistep.StepAction {
	state.Put("error", err)
	return multistep.ActionHalt
}
