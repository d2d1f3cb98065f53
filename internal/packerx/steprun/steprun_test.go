package steprun

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/common"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// fakeStep records its runs and cleanups in a shared log; it fails its
// first fails runs.
type fakeStep struct {
	name  string
	fails int
	log   *[]string
}

func (s *fakeStep) InnerStepName() string { return s.name }

func (s *fakeStep) Run(_ context.Context, state multistep.StateBag) multistep.StepAction {
	*s.log = append(*s.log, "run "+s.name)
	if s.fails > 0 {
		s.fails--
		state.Put("error", errors.New(s.name+" broke"))
		return multistep.ActionHalt
	}
	return multistep.ActionContinue
}

func (s *fakeStep) Cleanup(multistep.StateBag) { *s.log = append(*s.log, "cleanup "+s.name) }

func newState(input string) (*multistep.BasicStateBag, *bytes.Buffer) {
	var out bytes.Buffer
	state := new(multistep.BasicStateBag)
	state.Put("ui", &packersdk.BasicUi{Writer: &out, ErrorWriter: &out, TTY: &fakeTTY{bufio.NewReader(strings.NewReader(input))}})
	return state, &out
}

// fakeTTY answers prompts with the lines of a script.
type fakeTTY struct{ r *bufio.Reader }

func (t *fakeTTY) ReadString() (string, error) { return t.r.ReadString('\n') }
func (t *fakeTTY) Close() error                { return nil }

func run(t *testing.T, onError, input string, failB int) (log []string, state *multistep.BasicStateBag, out string) {
	t.Helper()
	steps := []multistep.Step{
		&fakeStep{name: "a", log: &log},
		&fakeStep{name: "b", fails: failB, log: &log},
		&fakeStep{name: "c", log: &log},
	}
	state, buf := newState(input)
	ui := state.Get("ui").(packersdk.Ui)
	NewRunner(steps, common.PackerConfig{PackerOnError: onError}, ui).Run(context.Background(), state)
	return log, state, buf.String()
}

func TestOnError(t *testing.T) {
	for _, tc := range []struct {
		onError, input string
		want           string
		say            string
	}{
		// A failed build cleans up by default, and with cleanup.
		{"", "", "run a,run b,cleanup b,cleanup a", ""},
		{OnErrorCleanup, "", "run a,run b,cleanup b,cleanup a", ""},
		// abort keeps what the steps made.
		{OnErrorAbort, "", "run a,run b", `Step "b" failed, aborting without cleanup`},
		{OnErrorCleanProv, "", "run a,run b", `Step "b" failed`},
		// ask: c cleans up, a aborts, r retries the step (here it works).
		{OnErrorAsk, "c\n", "run a,run b,cleanup b,cleanup a", "[c] Clean up"},
		{OnErrorAsk, "a\n", "run a,run b", "b broke"},
		{OnErrorAsk, "r\n", "run a,run b,run b,run c,cleanup c,cleanup b,cleanup a", ""},
		{OnErrorAsk, "x\nc\n", "run a,run b,cleanup b,cleanup a", `Incorrect input: "x"`},
	} {
		t.Run(tc.onError+"/"+strings.TrimSpace(tc.input), func(t *testing.T) {
			log, state, out := run(t, tc.onError, tc.input, 1)
			if got := strings.Join(log, ","); got != tc.want {
				t.Errorf("steps: %s, want %s", got, tc.want)
			}
			if !strings.Contains(out, tc.say) {
				t.Errorf("output lacks %q:\n%s", tc.say, out)
			}
			if tc.input == "r\n" {
				if _, failed := state.GetOk("error"); failed {
					t.Error("the retried step succeeded but the error stays")
				}
			}
		})
	}
}

// An interrupt cleans up whatever -on-error says: Ctrl-C leaves nothing.
func TestInterruptCleansUp(t *testing.T) {
	for _, onError := range []string{OnErrorAbort, OnErrorCleanProv, OnErrorAsk} {
		var log []string
		state, _ := newState("")
		state.Put(multistep.StateCancelled, true)
		state.Put(multistep.StateHalted, true)
		s := NewRunner([]multistep.Step{&fakeStep{name: "a", log: &log}}, common.PackerConfig{PackerOnError: onError}, state.Get("ui").(packersdk.Ui))
		// Cleanup as the runner calls it after a cancelled step.
		s.(*multistep.BasicRunner).Steps[0].Cleanup(state)
		if strings.Join(log, ",") != "cleanup a" {
			t.Errorf("%s: %v", onError, log)
		}
	}
}

// run-cleanup-provisioner still runs the provision step's cleanup, which
// runs the error-cleanup-provisioner; other steps keep what they made.
func TestRunCleanupProvisioner(t *testing.T) {
	var log []string
	hook := &packersdk.MockHook{}
	state, _ := newState("")
	state.Put("hook", hook)
	steps := []multistep.Step{new(Provision), &fakeStep{name: "b", fails: 1, log: &log}}
	NewRunner(steps, common.PackerConfig{PackerOnError: OnErrorCleanProv}, state.Get("ui").(packersdk.Ui)).Run(context.Background(), state)
	if hook.RunName != packersdk.HookCleanupProvision {
		t.Errorf("last hook run %q, want the cleanup provisioner", hook.RunName)
	}
	if strings.Join(log, ",") != "run b" {
		t.Errorf("steps: %v", log)
	}
}

func TestDebugPausesAfterEachStep(t *testing.T) {
	var log []string
	state, out := newState("\n\n\n\n")
	r := NewRunner([]multistep.Step{&fakeStep{name: "a", log: &log}, &fakeStep{name: "b", log: &log}},
		common.PackerConfig{PackerDebug: true}, state.Get("ui").(packersdk.Ui))
	r.Run(context.Background(), state)
	for _, want := range []string{"Pausing after run of step 'a'", "Pausing after run of step 'b'", "Pausing before cleanup of step 'a'"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestOutputDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(dir, "mine")
	os.WriteFile(mine, []byte("x"), 0o644)

	// Existing, no -force: refused, untouched, and not deleted on cleanup.
	state, _ := newState("")
	s := &OutputDir{Path: dir}
	if s.Run(context.Background(), state) != multistep.ActionHalt {
		t.Fatal("an existing output directory was accepted without -force")
	}
	if err := state.Get("error").(error); !strings.Contains(err.Error(), "output_directory "+dir+" exists") || !strings.Contains(err.Error(), "-force") {
		t.Errorf("error %q should name the key, the path and -force", err)
	}
	state.Put(multistep.StateHalted, true)
	s.Cleanup(state)
	if _, err := os.Stat(mine); err != nil {
		t.Fatalf("the user's file went: %v", err)
	}

	// -force replaces it; a successful build keeps the new directory.
	state, _ = newState("")
	s = &OutputDir{Path: dir, Force: true}
	if s.Run(context.Background(), state) != multistep.ActionContinue {
		t.Fatal(state.Get("error"))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("-force left %v", ents)
	}
	s.Cleanup(state)
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}

	// A failed or cancelled build deletes the directory it made.
	for _, key := range []string{multistep.StateHalted, multistep.StateCancelled} {
		state, _ = newState("")
		s = &OutputDir{Path: filepath.Join(t.TempDir(), "new", "out")}
		if s.Run(context.Background(), state) != multistep.ActionContinue {
			t.Fatal(state.Get("error"))
		}
		state.Put(key, true)
		s.Cleanup(state)
		if _, err := os.Stat(s.Path); !os.IsNotExist(err) {
			t.Errorf("%s: the output directory stays: %v", key, err)
		}
	}
}

func TestOutputDirNotWritable(t *testing.T) {
	if os.Geteuid() == 0 {
		// root writes anywhere: a file where a directory must be stands in.
		f := filepath.Join(t.TempDir(), "file")
		os.WriteFile(f, nil, 0o644)
		state, _ := newState("")
		if (&OutputDir{Path: filepath.Join(f, "out")}).Run(context.Background(), state) != multistep.ActionHalt {
			t.Fatal("an output directory under a file was accepted")
		}
		if err := state.Get("error").(error); !strings.Contains(err.Error(), "output_directory") {
			t.Errorf("error %q does not name the key", err)
		}
		return
	}
	parent := t.TempDir()
	os.Chmod(parent, 0o555)
	state, _ := newState("")
	if (&OutputDir{Path: filepath.Join(parent, "out")}).Run(context.Background(), state) != multistep.ActionHalt {
		t.Fatal("an unwritable output directory was accepted")
	}
}

func TestProvision(t *testing.T) {
	comm := new(packersdk.MockCommunicator)
	hook := &packersdk.MockHook{}
	state, _ := newState("")
	state.Put("hook", hook)
	state.Put("communicator", comm)
	state.Put("generated_data", map[string]interface{}{"Stage": "install"})
	t.Setenv("PACKER_RUN_UUID", "run-1")
	p := new(Provision)
	if p.Run(context.Background(), state) != multistep.ActionContinue {
		t.Fatal(state.Get("error"))
	}
	data := hook.RunData.(map[string]interface{})
	if hook.RunName != packersdk.HookProvision || hook.RunComm != comm || data["Stage"] != "install" || data["PackerRunUUID"] != "run-1" {
		t.Errorf("hook ran %q with %v, %v", hook.RunName, hook.RunComm, data)
	}
	// A successful build runs no cleanup provisioner.
	hook.RunName = ""
	p.Cleanup(state)
	if hook.RunName != "" {
		t.Error("cleanup provisioner ran after a successful build")
	}

	// A provisioner's error halts the build; the cleanup provisioner's
	// error keeps the original one in its message.
	hook.RunFunc = func(context.Context) error { return errors.New("shell exited 3") }
	if p.Run(context.Background(), state) != multistep.ActionHalt {
		t.Fatal("a failed provisioner did not halt the build")
	}
	p.Cleanup(state)
	if hook.RunName != packersdk.HookCleanupProvision {
		t.Errorf("cleanup ran %q", hook.RunName)
	}
	if err := state.Get("error").(error).Error(); !strings.Contains(err, "cleanup provisioner failed") || !strings.Contains(err, "shell exited 3") {
		t.Errorf("error %q", err)
	}

	// Cancelled while a provisioner runs: the step stops waiting.
	ctx, cancel := context.WithCancel(context.Background())
	block := make(chan struct{})
	defer close(block)
	hook.RunFunc = func(context.Context) error { <-block; return nil }
	cancel()
	if p.Run(ctx, state) != multistep.ActionHalt {
		t.Fatal("a cancelled provisioning step continued")
	}
}
