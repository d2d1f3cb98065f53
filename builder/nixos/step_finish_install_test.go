package nixos

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// installed is the state after stepInstall (efi layout, EFI variables)
// with the guest holding files.
func installed(t *testing.T, guest *fakeGuest, files map[string]string) (*multistep.BasicStateBag, *testUI, *stepInstall, *fakeQEMU) {
	t.Helper()
	for p, s := range files {
		guest.files[p] = s
	}
	q := &fakeQEMU{guest: guest}
	state, ui := installState(t, withEFIVars(t, map[string]interface{}{"partition_table_type": "efi"}), q)
	install := newStepInstall()
	requireContinue(t, install.Run(context.Background(), state), state)
	return state, ui, install, q
}

// A guest that cannot unmount halts the build with the VM's console; the
// install step's Cleanup then kills the VM and drops the EFI variables.
func TestStepFinishInstallHaltsWhenUnmountFails(t *testing.T) {
	guest := newFakeGuest()
	guest.fail["unmount"] = errFake
	state, ui, install, q := installed(t, guest, nil)
	step := &stepFinishInstall{}
	requireHalt(t, step.Run(context.Background(), state), state, ui, "finishing the installation: guest agent: unmount: fake failure\nlast console lines:")
	if _, ok := state.GetOk("efi_vars"); ok {
		t.Error("EFI variables were kept from a failed installation")
	}
	step.Cleanup(state)
	install.Cleanup(state)
	if !q.vm.wasKilled() || exists(install.vars) {
		t.Errorf("after Cleanup: VM killed %v, partial EFI variables %s left %v", q.vm.wasKilled(), install.vars, exists(install.vars))
	}
}

// The finished installation: account files sorted, the random seed and
// the machine-id gone, the VM powered off by itself, and the EFI
// variables kept under their final name through every Cleanup.
func TestStepFinishInstallKeepsTheEFIVariables(t *testing.T) {
	guest := newFakeGuest()
	state, ui, install, q := installed(t, guest, map[string]string{
		"/mnt/etc/shadow":              "root:x\nalice:x\n",
		"/mnt/boot/loader/random-seed": "seed",
		"/mnt/etc/machine-id":          "0123",
	})
	c := state.Get("config").(*Config)
	step := &stepFinishInstall{}
	requireContinue(t, step.Run(context.Background(), state), state)

	if s, _ := guest.file("/mnt/etc/shadow"); s != "alice:x\nroot:x\n" {
		t.Errorf("/etc/shadow is %q; want it sorted", s)
	}
	for _, f := range []string{"/mnt/boot/loader/random-seed", "/mnt/etc/machine-id"} {
		if _, ok := guest.file(f); ok {
			t.Errorf("%s is still there", f)
		}
	}
	ops := guest.did()
	if want := []string{"unmount /mnt", "sync", "poweroff"}; !slices.Equal(ops[len(ops)-3:], want) {
		t.Errorf("the guest ended with %q; want %q", ops[len(ops)-3:], want)
	}
	if q.vm.wasKilled() {
		t.Error("the VM was killed rather than powered off")
	}
	if !strings.Contains(ui.out.String(), "Deterministic image: sorted /etc/shadow, removed /boot/loader/random-seed") {
		t.Errorf("the user was told %q; want what was made deterministic", ui.out)
	}
	final := filepath.Join(c.OutputDir, EFIVarsFile)
	if state.Get("efi_vars") != final {
		t.Errorf("efi_vars %v; want %s", state.Get("efi_vars"), final)
	}
	step.Cleanup(state)
	install.Cleanup(state)
	if !exists(final) {
		t.Errorf("Cleanup removed the EFI variables %s", final)
	}
}
