package nixos

import (
	"context"
	"os"
	"path/filepath"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/initrd"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

// stepPrepareInstaller starts making what the installer VM boots as soon
// as the system is known, in the background, beside the closure, the Nix
// state and the image's writing; stepInstall waits only for what is not
// done yet. The initrd holds the agent and the modules the install needs.
// Under TCG without firmware the ELF kernel inside the bzImage is unpacked
// for a PVH boot: the host unpacks an xz kernel in about a second, where
// TCG would emulate the bzImage's own decompressor for several. Under KVM,
// or with touch_efi_vars (OVMF boots only a bzImage), the bzImage stays.
type stepPrepareInstaller struct {
	// writeInitrd writes the installer's initrd for the system
	// (writeInstallerInitrd; in tests a stand-in for a VM that needs none).
	writeInitrd func(path string, system *toplevel, gzip bool, needs initrd.Needs) error
	// unpack writes the ELF kernel inside bzImage to dst (vmlinux.Extract);
	// nil boots the bzImage.
	unpack func(bzImage, dst string) error
	files  *installerFiles
}

// installerFiles are the installer's boot files being made in dir.
type installerFiles struct {
	dir    string
	initrd *job
	kernel *job // nil: boot the system's bzImage
}

// job is a file being written in the background; wait returns its path
// once it is complete.
type job struct {
	path string
	done chan struct{}
	err  error
}

func startJob(path string, write func(path string) error) *job {
	j := &job{path: path, done: make(chan struct{})}
	go func() {
		defer close(j.done)
		j.err = write(path)
	}()
	return j
}

func (j *job) wait() (string, error) {
	<-j.done
	return j.path, j.err
}

func (s *stepPrepareInstaller) Run(_ context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	system := state.Get("system").(*toplevel)
	dir, err := os.MkdirTemp("", "packer-nixos-installer-")
	if err != nil {
		return halt(state, err)
	}
	f := &installerFiles{dir: dir}
	s.files = f
	// OVMF (touch_efi_vars) loads the initrd itself and needs it small.
	needs := initrd.Needs{FAT: hasESP(c.layout), EFIVars: c.TouchEFIVars, EtcOverlay: system.has("etc-metadata-image")}
	f.initrd = startJob(filepath.Join(dir, "initrd.cpio"), func(path string) error {
		return s.writeInitrd(path, system, c.TouchEFIVars, needs)
	})
	// Only an x86 bzImage carries a decompressor TCG would emulate; an
	// arm64 Image is booted as it is.
	if s.unpack != nil && !c.TouchEFIVars && c.Accelerator != string(qemu.KVM) && system.arch.Name != qemu.AArch64.Name {
		f.kernel = startJob(filepath.Join(dir, "vmlinux"), func(path string) error {
			return s.unpack(system.kernel, path)
		})
	}
	state.Put("installer_files", f)
	return multistep.ActionContinue
}

func (s *stepPrepareInstaller) Cleanup(multistep.StateBag) {
	if f := s.files; f != nil {
		// Both write into the directory.
		f.initrd.wait()
		if f.kernel != nil {
			f.kernel.wait()
		}
		os.RemoveAll(f.dir)
	}
}
