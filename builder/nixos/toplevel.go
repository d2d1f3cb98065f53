package nixos

import (
	"fmt"
	"os"
	"path/filepath"
)

// toplevel is what install mode needs from a system.build.toplevel.
type toplevel struct {
	path          string
	kernel        string // bzImage
	modulesDir    string // <kernel-modules>/lib/modules/<version>, "" if the kernel has no modules
	kernelVersion string
}

// inspectToplevel checks that path is a NixOS system: it has the switch
// script the installer runs and a kernel to boot the installer VM with.
func inspectToplevel(path string) (*toplevel, error) {
	t := &toplevel{path: path}
	for _, need := range []string{"bin/switch-to-configuration", "kernel", "activate"} {
		if !t.has(need) {
			return nil, fmt.Errorf("%s is not a NixOS system (config.system.build.toplevel): it has no %s", path, need)
		}
	}
	t.kernel = filepath.Join(path, "kernel")
	t.kernelVersion = "with everything built in"
	if t.has("kernel-modules") {
		dir, err := ModulesDir(filepath.Join(path, "kernel-modules"))
		if err != nil {
			return nil, err
		}
		t.modulesDir, t.kernelVersion = dir, filepath.Base(dir)
	}
	return t, nil
}

// has says whether the system holds rel (a path inside it).
func (t *toplevel) has(rel string) bool {
	_, err := os.Stat(filepath.Join(t.path, rel))
	return err == nil
}
