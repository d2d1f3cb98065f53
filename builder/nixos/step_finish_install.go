package nixos

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/rootfiles"
)

// stepFinishInstall ends the installer VM after the provisioners: it
// removes /etc/machine-id, unmounts, syncs and powers off, and keeps the
// EFI variables.
type stepFinishInstall struct{}

func (f *stepFinishInstall) Run(_ context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	s := state.Get("installer").(*stepInstall)
	s.phase("provisioners")
	if *c.Deterministic {
		// systemd-boot's seed lives on the ESP, wherever the system mounts
		// it; a layout without one, or a system without one, has none.
		var espDirs []string
		if s.espDir != "" {
			espDirs = []string{s.espDir}
		}
		if err := s.deterministicFiles(s.ctx, ui, espDirs); err != nil {
			return halt(state, s.vmError("making the installed files deterministic", s.timeoutError(c, err)))
		}
	}
	if err := s.finish(s.ctx, ui); err != nil {
		return halt(state, s.vmError("finishing the installation", s.timeoutError(c, err)))
	}
	if err := s.vm.Wait(); err != nil {
		return halt(state, fmt.Errorf("the installer VM did not power off cleanly: %w", err))
	}
	s.vm = nil
	s.phase("shutdown")
	if s.vars != "" {
		final := filepath.Join(c.OutputDir, EFIVarsFile)
		if err := os.Rename(s.vars, final); err != nil {
			return halt(state, err)
		}
		s.vars = ""
		state.Put("efi_vars", final)
		ui.Say("EFI variables: " + final)
	}
	ui.Say(fmt.Sprintf("Installed in %s (%s)", time.Since(s.start).Round(100*time.Millisecond), strings.Join(s.phases, ", ")))
	return multistep.ActionContinue
}

// Cleanup has nothing of its own: the VM is stepInstall's, whose Cleanup
// ends it.
func (f *stepFinishInstall) Cleanup(multistep.StateBag) {}

// deterministicFiles undoes what activation and the boot loader's
// installation leave to chance: the order of /etc/shadow and friends
// (update-users-groups.pl appends new accounts in Perl's random hash order)
// and systemd-boot's random seed. The seed is dropped rather than fixed: a
// seed shared by every copy of an image is no seed, and systemd writes a
// fresh one on the first boot (systemd-boot-random-seed.service).
func (s *stepInstall) deterministicFiles(ctx context.Context, ui packersdk.Ui, espDirs []string) error {
	cl := s.client
	var done []string
	for _, f := range rootfiles.AccountFiles {
		var buf bytes.Buffer
		fi, err := cl.Download(ctx, guestRoot, f, &buf)
		if isNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		sorted := rootfiles.SortLines(buf.Bytes())
		if bytes.Equal(sorted, buf.Bytes()) {
			continue
		}
		if err := cl.Upload(ctx, guestRoot, f, unixmode.FileMode(fi.Mode), fi.Uid, fi.Gid, bytes.NewReader(sorted), int64(len(sorted))); err != nil {
			return err
		}
		done = append(done, "sorted "+f)
	}
	for _, dir := range espDirs {
		err := cl.Remove(ctx, guestRoot, "/"+dir+"/loader/random-seed", false)
		if err == nil {
			done = append(done, "removed /"+dir+"/loader/random-seed")
		} else if !isNotExist(err) {
			return err
		}
	}
	if len(done) > 0 {
		ui.Say("Deterministic image: " + strings.Join(done, ", "))
	}
	return nil
}

// finish leaves the image as nixos-install does and powers the VM off.
func (s *stepInstall) finish(ctx context.Context, ui packersdk.Ui) error {
	cl := s.client
	// Every image would share one machine identity otherwise.
	if err := cl.Remove(ctx, guestRoot, rootfiles.MachineIDFile, false); err != nil && !isNotExist(err) {
		return err
	}
	if err := cl.Unmount(ctx, guestRoot); err != nil {
		return err
	}
	if err := cl.Sync(ctx); err != nil {
		return err
	}
	ui.Say("Powering the installer VM off...")
	return cl.Poweroff(ctx)
}
