package nixos

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	nixtoplevel "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/toplevel"
)

// withWants is the state's system, saying where it mounts its boot
// partitions and what its GRUB installs onto.
func withWants(t *testing.T, state multistep.StateBag, boot nixtoplevel.BootMounts, grub ...nixtoplevel.GRUB) *toplevel {
	t.Helper()
	sys := &toplevel{path: testToplevel(t), kernel: "/boot/bzImage", boot: boot, wants: &nixtoplevel.System{GRUB: grub}}
	state.Put("system", sys)
	return sys
}

// execs are the guest's commands, without the other operations.
func execs(g *fakeGuest) []string {
	var out []string
	for _, op := range g.did() {
		if strings.HasPrefix(op, "exec ") {
			out = append(out, op)
		}
	}
	return out
}

// The ESP and XBOOTLDR go where the system mounts them, an outer mount
// point before the one inside it; finishing removes the random seed from
// the ESP there.
func TestStepInstallMountsTheBootPartitionsWhereTheSystemDoes(t *testing.T) {
	guest := newFakeGuest()
	q := &fakeQEMU{guest: guest}
	state, ui := installState(t, map[string]interface{}{"partition_table_type": "efixbootldr"}, q)
	withWants(t, state, nixtoplevel.BootMounts{Known: true,
		ESP: nixtoplevel.Want{Point: "/boot/efi"}, XBootLdr: nixtoplevel.Want{Point: "/boot"}})
	step := newStepInstall()
	requireContinue(t, step.Run(context.Background(), state), state)
	defer step.Cleanup(state)
	want := []string{"mount /dev/vda3 /mnt ext4", "mount /dev/vda2 /mnt/boot vfat", "mount /dev/vda1 /mnt/boot/efi vfat", "bind /mnt"}
	if got := guest.did()[:4]; !slices.Equal(got, want) {
		t.Errorf("the guest did\n  %q\nwant\n  %q", got, want)
	}

	guest.files["/mnt/boot/efi/loader/random-seed"] = "seed"
	requireContinue(t, (&stepFinishInstall{}).Run(context.Background(), state), state)
	if _, ok := guest.file("/mnt/boot/efi/loader/random-seed"); ok {
		t.Error("the ESP's random seed is still there")
	}
	if !strings.Contains(ui.out.String(), "removed /boot/efi/loader/random-seed") {
		t.Errorf("the user was told %q", ui.out)
	}
}

// GRUB's devices become links to the VM's disk, made with the system's own
// tools before switch-to-configuration runs; the disk itself needs none.
func TestStepInstallLinksGRUBsDevices(t *testing.T) {
	guest := newFakeGuest()
	q := &fakeQEMU{guest: guest}
	state, _ := installState(t, map[string]interface{}{"partition_table_type": "legacy"}, q)
	withWants(t, state, nixtoplevel.BootMounts{Known: true},
		nixtoplevel.GRUB{Target: "i386-pc", Devices: []string{"/dev/sda", "/dev/vda"}},
		nixtoplevel.GRUB{Target: "i386-pc", Devices: []string{"/dev/disk/by-id/ata-QEMU_HARDDISK", "nodev", "/dev/sda"}})
	step := newStepInstall()
	requireContinue(t, step.Run(context.Background(), state), state)
	defer step.Cleanup(state)
	bin := systemProfile + "/sw/bin/"
	want := []string{
		"exec " + systemProfile + "/activate",
		"exec " + bin + "mkdir -p /dev", "exec " + bin + "ln -sfn /dev/vda /dev/sda",
		"exec " + bin + "mkdir -p /dev/disk/by-id", "exec " + bin + "ln -sfn /dev/vda /dev/disk/by-id/ata-QEMU_HARDDISK",
		"exec " + systemProfile + "/bin/switch-to-configuration boot",
	}
	if got := slices.DeleteFunc(execs(guest), func(s string) bool { return strings.Contains(s, "systemd-tmpfiles") }); !slices.Equal(got, want) {
		t.Errorf("the guest ran\n  %q\nwant\n  %q", got, want)
	}
}

// A link that cannot be made halts the build before the boot loader.
func TestStepInstallHaltsWhenALinkFails(t *testing.T) {
	guest := newFakeGuest()
	guest.status["ln"] = 1
	q := &fakeQEMU{guest: guest}
	state, ui := installState(t, map[string]interface{}{}, q)
	withWants(t, state, nixtoplevel.BootMounts{Known: true}, nixtoplevel.GRUB{Target: "i386-pc", Devices: []string{"/dev/sda"}})
	step := newStepInstall()
	requireHalt(t, step.Run(context.Background(), state), state, ui,
		"installing: linking GRUB's device /dev/sda to /dev/vda: "+systemProfile+"/sw/bin/ln -sfn /dev/vda /dev/sda: exited with status 1")
	step.Cleanup(state)
	if slices.ContainsFunc(guest.did(), func(s string) bool { return strings.Contains(s, "switch-to-configuration") }) {
		t.Error("switch-to-configuration ran after a failed link")
	}
}

// install_bootloader = false is nixos-install --no-bootloader: activation
// runs, switch-to-configuration does not, nor are devices linked.
func TestStepInstallWithoutTheBootLoader(t *testing.T) {
	guest := newFakeGuest()
	q := &fakeQEMU{guest: guest}
	state, ui := installState(t, map[string]interface{}{"partition_table_type": "efi", "install_bootloader": false}, q)
	withWants(t, state, nixtoplevel.BootMounts{Known: true, ESP: nixtoplevel.Want{Point: "/boot"}},
		nixtoplevel.GRUB{Target: "i386-pc", Devices: []string{"/dev/sda"}})
	step := newStepInstall()
	requireContinue(t, step.Run(context.Background(), state), state)
	defer step.Cleanup(state)
	if got := execs(guest); !slices.Equal(got, []string{"exec " + systemProfile + "/activate"}) {
		t.Errorf("the guest ran %q; want activation only", got)
	}
	if !strings.Contains(ui.out.String(), "Not installing a boot loader (install_bootloader = false), as nixos-install --no-bootloader") {
		t.Errorf("the user was told %q", ui.out)
	}
	if _, ok := state.Get("communicator").(*guestComm); !ok {
		t.Error("no communicator for the provisioners")
	}
}
