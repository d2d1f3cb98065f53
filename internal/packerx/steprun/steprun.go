// Package steprun runs a builder's steps the way Packer users expect of
// `-debug` and `-on-error`, and holds the two steps every builder here
// shares: the output directory and the provisioners' hook.
//
// The SDK has these in multistep/commonsteps, but importing that package
// links go-getter with its S3 and GCS clients into the plugin: 16 MB of
// binary, about 400 packages, and 11 MiB of peak RSS on every build, since
// the kernel maps a freshly installed binary's text in large folios.
package steprun

import (
	"context"
	"fmt"
	"log"
	"reflect"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/common"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// On-error modes, as `packer build -on-error=…` passes them.
const (
	OnErrorCleanup   = "cleanup"
	OnErrorAbort     = "abort"
	OnErrorAsk       = "ask"
	OnErrorCleanProv = "run-cleanup-provisioner"
)

// State keys the wrappers share.
const (
	keyAborted = "steprun.aborted" // ask: the user chose to abort
	keyLogged  = "steprun.logged"  // the failure was already reported
)

// pollCancel is how often a prompt checks whether the build was cancelled.
const pollCancel = 100 * time.Millisecond

// NewRunner returns a runner for steps that honours the build's -on-error
// and -debug. A failed step's error is reported once; with abort (or ask,
// answered "a") the failed build's steps are not cleaned up, so what they
// made stays for inspection. An interrupt always cleans up: Ctrl-C leaves
// no process, mount or temp file whatever -on-error says.
func NewRunner(steps []multistep.Step, cfg common.PackerConfig, ui packersdk.Ui) multistep.Runner {
	wrapped := make([]multistep.Step, len(steps))
	for i, s := range steps {
		switch cfg.PackerOnError {
		case OnErrorAbort:
			wrapped[i] = abortStep{step: s, ui: ui}
		case OnErrorCleanProv:
			wrapped[i] = abortStep{step: s, ui: ui, keepProvCleanup: true}
		case OnErrorAsk:
			wrapped[i] = askStep{step: s, ui: ui}
		default: // "" and cleanup; Packer refuses other values
			wrapped[i] = s
		}
	}
	if cfg.PackerDebug {
		return &multistep.DebugRunner{Steps: wrapped, PauseFn: debugPause(ui)}
	}
	return &multistep.BasicRunner{Steps: wrapped}
}

// stepName is the step's type name, as Packer's messages show it.
func stepName(s multistep.Step) string {
	if n, ok := s.(interface{ InnerStepName() string }); ok {
		return n.InnerStepName()
	}
	return reflect.Indirect(reflect.ValueOf(s)).Type().Name()
}

// abortStep skips its step's cleanup when the build failed.
type abortStep struct {
	step multistep.Step
	ui   packersdk.Ui
	// keepProvCleanup: run-cleanup-provisioner still runs the provision
	// step's cleanup, which runs the error-cleanup-provisioner.
	keepProvCleanup bool
}

func (s abortStep) InnerStepName() string { return stepName(s.step) }

func (s abortStep) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	return s.step.Run(ctx, state)
}

func (s abortStep) Cleanup(state multistep.StateBag) {
	if _, prov := s.step.(*Provision); prov && s.keepProvCleanup {
		s.step.Cleanup(state)
		return
	}
	if skipCleanup(state, s.ui, stepName(s.step)) {
		return
	}
	s.step.Cleanup(state)
}

// skipCleanup reports whether a failed build's step keeps what it made,
// saying so once for the build and once for each step after.
func skipCleanup(state multistep.StateBag, ui packersdk.Ui, name string) bool {
	if _, cancelled := state.GetOk(multistep.StateCancelled); cancelled {
		return false
	}
	_, halted := state.GetOk(multistep.StateHalted)
	_, aborted := state.GetOk(keyAborted)
	if !halted && !aborted {
		return false
	}
	if _, logged := state.GetOk(keyLogged); !logged {
		if err, ok := state.GetOk("error"); ok {
			ui.Error(fmt.Sprint(err))
		}
		ui.Error(fmt.Sprintf("Step %q failed, aborting without cleanup (-on-error)", name))
		state.Put(keyLogged, true)
		return true
	}
	ui.Error(fmt.Sprintf("aborted: skipping cleanup of step %q", name))
	return true
}

// askStep asks, when its step fails, whether to clean up, abort or retry.
type askStep struct {
	step multistep.Step
	ui   packersdk.Ui
}

func (s askStep) InnerStepName() string { return stepName(s.step) }

func (s askStep) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	for {
		action := s.step.Run(ctx, state)
		if action != multistep.ActionHalt {
			return action
		}
		if err, ok := state.GetOk("error"); ok {
			s.ui.Error(fmt.Sprint(err))
		}
		switch askUser(s.ui, stepName(s.step), state) {
		case 'a':
			state.Put(keyAborted, true)
			state.Put(keyLogged, true) // the error was just shown
			return action
		case 'r':
			state.Remove("error")
			continue
		default:
			return action
		}
	}
}

func (s askStep) Cleanup(state multistep.StateBag) {
	if _, aborted := state.GetOk(keyAborted); aborted && skipCleanup(state, s.ui, stepName(s.step)) {
		return
	}
	s.step.Cleanup(state)
}

// askUser returns 'c', 'a' or 'r'; an interrupt while waiting means 'c'.
func askUser(ui packersdk.Ui, name string, state multistep.StateBag) byte {
	ui.Say(fmt.Sprintf("Step %q failed", name))
	answer := make(chan byte, 1)
	go func() {
		for {
			line, err := ui.Ask("[c] Clean up and exit, [a] abort without cleanup, or [r] retry step (build may fail even if retry succeeds)?")
			if err != nil {
				log.Printf("asking for input: %v", err)
				answer <- 'c'
				return
			}
			switch c := (strings.ToLower(strings.TrimSpace(line)) + "c")[0]; c {
			case 'c', 'a', 'r':
				answer <- c
				return
			}
			ui.Say(fmt.Sprintf("Incorrect input: %q", line))
		}
	}()
	return waitOrCancel(answer, state, 'c')
}

// debugPause is -debug's pause between steps: it waits for enter, or for
// the build to be cancelled.
func debugPause(ui packersdk.Ui) multistep.DebugPauseFn {
	return func(loc multistep.DebugLocation, name string, state multistep.StateBag) {
		where := "at"
		switch loc {
		case multistep.DebugLocationAfterRun:
			where = "after run of"
		case multistep.DebugLocationBeforeCleanup:
			where = "before cleanup of"
		}
		done := make(chan byte, 1)
		go func() {
			if _, err := ui.Ask(fmt.Sprintf("Pausing %s step '%s'. Press enter to continue.", where, name)); err != nil {
				log.Printf("asking for input: %v", err)
			}
			done <- 0
		}()
		waitOrCancel(done, state, 0)
	}
}

func waitOrCancel(ch <-chan byte, state multistep.StateBag, onCancel byte) byte {
	t := time.NewTicker(pollCancel)
	defer t.Stop()
	for {
		select {
		case v := <-ch:
			return v
		case <-t.C:
			if _, ok := state.GetOk(multistep.StateCancelled); ok {
				return onCancel
			}
		}
	}
}
