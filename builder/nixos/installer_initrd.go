package nixos

import (
	"debug/elf"
	"fmt"
	"log"
	"os"
	"runtime"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentbin"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/initrd"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
)

// writeInstallerInitrd puts the agent, as /init, and the modules the
// installer needs from the system's own kernel into an initrd, both for
// the system's architecture (its kernel boots the VM), not the host's.
// The agent is agentbin's, or this plugin binary itself when it was built
// without one. With gzip (OVMF boots the VM) the archive is compressed.
func writeInstallerInitrd(path string, system *toplevel, gzip bool, needs initrd.Needs) error {
	// The system's, read from its `system` file or its kernel's header
	// (systemArch); a toplevel made by hand in a test: x86_64.
	goarch := system.arch.OrDefault().GOARCH
	needs.GOARCH = goarch
	o := initrd.Options{ModulesDir: system.modulesDir, Gzip: gzip, Needs: &needs}
	if data, hash, ok := agentbin.Agent(goarch); ok {
		log.Printf("installer agent: the embedded %s one (%d bytes, sources %.12s)", goarch, len(data), hash)
		o.AgentData = data
	} else {
		if goarch != runtime.GOARCH {
			return fmt.Errorf("this plugin was built without go generate's installer agents, and itself (linux/%s) cannot be the /init of an installer for a linux/%s system: build it with make build (or a release)", runtime.GOARCH, goarch)
		}
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		if err := checkStatic(exe); err != nil {
			return err
		}
		log.Printf("installer agent: this plugin binary %s (built without go generate's agent)", exe)
		o.Agent = exe
	}
	if err := checkEtcOverlay(system); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := initrd.Build(f, o); err != nil {
		return err
	}
	return f.Close()
}

// checkEtcOverlay refuses a system with system.etc.overlay whose kernel
// lacks a module its activation needs: the installer initrd preloads them
// (initrd.DefaultModules), having no modprobe for the kernel to call.
func checkEtcOverlay(system *toplevel) error {
	if system.modulesDir == "" || !system.has("etc-metadata-image") {
		return nil
	}
	db, err := kmod.Load(system.modulesDir)
	if err != nil {
		return err
	}
	var missing []string
	for _, m := range initrd.EtcOverlayModules {
		if !db.Known(m) {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the system uses system.etc.overlay (it has etc-metadata-image), whose activation mounts /etc from an erofs image through a loop device with overlayfs, but its kernel has no %s module (neither in %s/modules.dep nor built in)",
			strings.Join(missing, ", "), system.modulesDir)
	}
	return nil
}

// checkStatic refuses a dynamically linked plugin binary: it could not run
// as /init in an initrd with no libc.
func checkStatic(exe string) error {
	f, err := elf.Open(exe)
	if err != nil {
		return fmt.Errorf("reading the plugin binary %s: %w", exe, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("the plugin binary %s is dynamically linked, so it cannot run as the installer VM's /init: build it with CGO_ENABLED=0 (make build does)", exe)
		}
	}
	return nil
}
