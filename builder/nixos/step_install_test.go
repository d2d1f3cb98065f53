package nixos

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/initrd"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

// installState is the state stepInstall starts from in install mode,
// configured by raw, with QEMU faked by q.
func installState(t *testing.T, raw map[string]interface{}, q *fakeQEMU) (*multistep.BasicStateBag, *testUI) {
	t.Helper()
	raw["only_nix_store"] = false
	c := prepared(t, raw)
	state, ui := newState(c)
	state.Put("plan", &plan{layout: testLayout(t, c.layout), epoch: c.epoch})
	state.Put("system", &toplevel{path: testToplevel(t), kernel: "/boot/bzImage"})
	rawImage := filepath.Join(t.TempDir(), "raw.img")
	if err := os.WriteFile(rawImage, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	state.Put("raw_image", rawImage)
	state.Put("qemu", q)
	prepare := &stepPrepareInstaller{writeInitrd: emptyInitrd}
	requireContinue(t, prepare.Run(context.Background(), state), state)
	t.Cleanup(func() { prepare.Cleanup(state) })
	return state, ui
}

// emptyInitrd stands for writeInstallerInitrd: the fake VM boots nothing.
func emptyInitrd(path string, _ *toplevel, _ bool, _ initrd.Needs) error {
	return os.WriteFile(path, nil, 0o644)
}

// withEFIVars is raw with touch_efi_vars on, and firmware files for it.
func withEFIVars(t *testing.T, raw map[string]interface{}) map[string]interface{} {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"code.fd", "vars.fd"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("firmware"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw["touch_efi_vars"] = true
	raw["efi_firmware_code"] = filepath.Join(dir, "code.fd")
	raw["efi_firmware_vars"] = filepath.Join(dir, "vars.fd")
	return raw
}

func newStepInstall() *stepInstall { return &stepInstall{} }

// A VM that does not start halts the build; Cleanup removes the VM's
// directory and the EFI variables being written.
func TestStepInstallHaltsWhenQEMUFails(t *testing.T) {
	state, ui := installState(t, withEFIVars(t, map[string]interface{}{"partition_table_type": "efi"}), &fakeQEMU{startErr: errFake})
	step := newStepInstall()
	requireHalt(t, step.Run(context.Background(), state), state, ui, "starting the installer VM: fake failure")
	if !exists(step.dir) || !exists(step.vars) {
		t.Fatalf("nothing to clean up: VM directory %q, EFI variables %q", step.dir, step.vars)
	}
	step.Cleanup(state)
	if exists(step.dir) || exists(step.vars) {
		t.Errorf("Cleanup left %s or %s", step.dir, step.vars)
	}
}

// A VM whose agent never answers ends the wait as soon as it dies; the
// error carries the console's last lines, and Cleanup kills the VM.
func TestStepInstallHaltsWhenTheAgentIsSilent(t *testing.T) {
	q := &fakeQEMU{}
	state, ui := installState(t, map[string]interface{}{}, q)
	step := newStepInstall()
	action := make(chan multistep.StepAction, 1)
	go func() { action <- step.Run(context.Background(), state) }()
	select {
	case a := <-action:
		requireHalt(t, a, state, ui, "the installer VM's agent did not answer: ")
	case <-time.After(10 * time.Second): // the agent's own wait is 2 minutes
		t.Fatal("the step still waits for the agent of a dead VM")
	}
	if !strings.Contains(ui.errs.String(), "last console lines:\n  fake console: the last line") {
		t.Errorf("the user was told %q; want the console's last lines", ui.errs)
	}
	step.Cleanup(state)
	if !q.vm.wasKilled() || exists(step.dir) {
		t.Errorf("after Cleanup: VM killed %v, %s left %v", q.vm.wasKilled(), step.dir, exists(step.dir))
	}
}

// A failing boot loader installation halts the build with the VM's console.
func TestStepInstallHaltsWhenTheBootLoaderFails(t *testing.T) {
	guest := newFakeGuest()
	guest.status["switch-to-configuration"] = 1
	q := &fakeQEMU{guest: guest}
	state, ui := installState(t, map[string]interface{}{}, q)
	step := newStepInstall()
	requireHalt(t, step.Run(context.Background(), state), state, ui, "installing: switch-to-configuration boot exited with status 1\nlast console lines:")
	step.Cleanup(state)
	if !q.vm.wasKilled() {
		t.Error("Cleanup left the VM running")
	}
}

// The installer VM boots with the configured machine, mounts the layout's
// partitions where systemd-boot expects them, activates the system and
// installs the boot loader, then hands the provisioners a communicator.
func TestStepInstallInstalls(t *testing.T) {
	guest := newFakeGuest()
	q := &fakeQEMU{guest: guest}
	state, _ := installState(t, map[string]interface{}{"partition_table_type": "efixbootldr"}, q)
	step := newStepInstall()
	requireContinue(t, step.Run(context.Background(), state), state)

	vmc := q.started[0]
	rawImage := state.Get("raw_image").(string)
	if vmc.Accel != qemu.TCG || vmc.MemMiB != 256 || vmc.Kernel != "/boot/bzImage" || len(vmc.Disks) != 1 || vmc.Disks[0].Path != rawImage {
		t.Errorf("VM %+v; want TCG, 256 MiB, the system's kernel and the raw image", vmc)
	}
	// Deterministic: the guest's clock starts at source_date_epoch, but not before 2000.
	if want := []string{"-rtc", "base=2000-01-01T00:00:00,clock=vm"}; !slices.Equal(vmc.ExtraArgs, want) {
		t.Errorf("QEMU's extra arguments %q; want %q", vmc.ExtraArgs, want)
	}
	want := []string{
		"mount /dev/vda3 /mnt ext4", "mount /dev/vda1 /mnt/efi vfat", "mount /dev/vda2 /mnt/boot vfat", "bind /mnt",
		"exec /nix/var/nix/profiles/system/activate", "exec /nix/var/nix/profiles/system/bin/switch-to-configuration boot",
	}
	if got := guest.did(); !slices.Equal(got, want) {
		t.Errorf("the guest did\n  %q\nwant\n  %q", got, want)
	}
	if _, ok := state.Get("communicator").(*guestComm); !ok || state.Get("installer") != step {
		t.Errorf("communicator %T, installer %v; want the guest's and this step", state.Get("communicator"), state.Get("installer"))
	}
	if got := state.Get("generated_data").(map[string]interface{})[stageops.GeneratedKey]; got != stageops.Install {
		t.Errorf("generated %s = %v; want %v", stageops.GeneratedKey, got, stageops.Install)
	}
	step.Cleanup(state)
	if !q.vm.wasKilled() || exists(step.dir) {
		t.Errorf("after Cleanup: VM killed %v, %s left %v", q.vm.wasKilled(), step.dir, exists(step.dir))
	}
}

// What the installer boots is made in the background from the moment
// the system is known (stepPrepareInstaller), beside the steps that write
// the image, and stepInstall boots it: under TCG without firmware the
// kernel unpacked for a PVH boot, and an initrd with only the modules the
// layout needs. Under KVM or with touch_efi_vars (OVMF boots the bzImage)
// nothing is unpacked.
func TestStepPrepareInstallerWorksBesideTheOtherSteps(t *testing.T) {
	for _, tc := range []struct {
		raw    map[string]interface{}
		unpack bool
		needs  initrd.Needs
	}{
		{map[string]interface{}{"partition_table_type": "legacy", "accelerator": "tcg"}, true, initrd.Needs{}},
		{map[string]interface{}{"partition_table_type": "efi", "accelerator": "tcg"}, true, initrd.Needs{FAT: true}},
		{map[string]interface{}{"partition_table_type": "efi", "accelerator": "kvm"}, false, initrd.Needs{FAT: true}},
		{withEFIVars(t, map[string]interface{}{"partition_table_type": "efi", "accelerator": "tcg"}), false, initrd.Needs{FAT: true, EFIVars: true}},
	} {
		q := &fakeQEMU{guest: newFakeGuest()}
		state, _ := installState(t, tc.raw, q)
		// Neither job may finish before Run returns: they run in the
		// background while the next steps (here: none) go on.
		release := make(chan struct{})
		var gotNeeds initrd.Needs
		unpacked := false
		prepare := &stepPrepareInstaller{
			writeInitrd: func(path string, _ *toplevel, _ bool, needs initrd.Needs) error {
				<-release
				gotNeeds = needs
				return os.WriteFile(path, nil, 0o644)
			},
			unpack: func(bzImage, dst string) error {
				<-release
				unpacked = true
				return os.WriteFile(dst, []byte(bzImage), 0o644)
			},
		}
		ran := make(chan multistep.StepAction, 1)
		go func() { ran <- prepare.Run(context.Background(), state) }()
		select {
		case a := <-ran:
			requireContinue(t, a, state)
		case <-time.After(10 * time.Second):
			t.Fatal("stepPrepareInstaller.Run waits for the initrd or the kernel")
		}
		close(release)
		step := newStepInstall()
		requireContinue(t, step.Run(context.Background(), state), state)
		if gotNeeds != tc.needs {
			t.Errorf("%v: initrd modules for %+v, want %+v", tc.raw["partition_table_type"], gotNeeds, tc.needs)
		}
		want := "/boot/bzImage"
		if tc.unpack {
			want = filepath.Join(prepare.files.dir, "vmlinux")
		}
		if unpacked != tc.unpack || q.started[0].Kernel != want || q.started[0].Initrd != filepath.Join(prepare.files.dir, "initrd.cpio") {
			t.Errorf("%v: unpacked %v, booted %s with %s; want %v, %s", tc.raw, unpacked, q.started[0].Kernel, q.started[0].Initrd, tc.unpack, want)
		}
		step.Cleanup(state)
		prepare.Cleanup(state)
		if exists(prepare.files.dir) {
			t.Errorf("Cleanup left %s", prepare.files.dir)
		}
	}
}
