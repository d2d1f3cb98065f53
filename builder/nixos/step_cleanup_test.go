package nixos

import (
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// Packer runs the Cleanup of every step it started, also after an earlier
// step halted: on a step whose Run never ran, Cleanup does nothing and
// needs nothing in the state bag.
func TestStepCleanupNeverRan(t *testing.T) {
	for name, step := range map[string]multistep.Step{
		"stepResolveSystem": &stepResolveSystem{}, "stepChannel": &stepChannel{}, "stepClosure": &stepClosure{},
		"stepNixState": &stepNixState{}, "stepStoreComm": &stepStoreComm{}, "stepPlan": &stepPlan{},
		"stepWriteImage": &stepWriteImage{}, "stepInstall": newStepInstall(), "stepFinishInstall": &stepFinishInstall{},
		"stepNormalize": &stepNormalize{}, "stepConvert": &stepConvert{},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("Cleanup panicked: %v", r)
				}
			}()
			step.Cleanup(new(multistep.BasicStateBag))
		})
	}
}
