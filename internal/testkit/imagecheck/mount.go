package imagecheck

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// kernelMount is the outcome of probing whether this environment can
// loop-mount ext4 at all, per mount options: "" when it can, else why not.
var kernelMount struct {
	sync.Mutex
	why map[string]string
}

// RequireKernelMount skips the test unless this environment can loop-mount
// ext4 with opts (as `mount -o loop,<opts>`): it needs root, mount, umount
// and mkfs.ext4, and the kernel must mount a known-good image that
// mkfs.ext4 made. Only a failure of that probe is a reason to skip; once it
// passes, a failure to mount an image of ours is the image's fault (see
// MountExt4). The probe runs once per test binary and options.
func RequireKernelMount(t testing.TB, opts string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop mounts need root")
	}
	RequireTool(t, "mount", "umount", "mkfs.ext4")
	kernelMount.Lock()
	defer kernelMount.Unlock()
	if kernelMount.why == nil {
		kernelMount.why = map[string]string{}
	}
	why, done := kernelMount.why[opts]
	if !done {
		why = probeKernelMount(opts)
		kernelMount.why[opts] = why
	}
	if why != "" {
		t.Skipf("this environment cannot loop-mount ext4 (a known-good image made by mkfs.ext4 failed too): %s", why)
	}
}

// probeKernelMount mounts and unmounts a fresh mkfs.ext4 image; it returns
// why that failed, or "".
func probeKernelMount(opts string) string {
	dir, err := os.MkdirTemp("", "imagecheck-mount-probe-")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(dir)
	img, mnt := filepath.Join(dir, "probe.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return err.Error()
	}
	f, err := os.Create(img)
	if err != nil {
		return err.Error()
	}
	err = f.Truncate(8 << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err.Error()
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		return fmt.Sprintf("mkfs.ext4: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("mount", "-o", mountOpts(opts), "-t", "ext4", img, mnt).CombinedOutput(); err != nil {
		return fmt.Sprintf("mount: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		return fmt.Sprintf("umount: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return ""
}

func mountOpts(opts string) string {
	if opts == "" {
		return "loop"
	}
	return "loop," + opts
}

// MountExt4 loop-mounts the ext4 image img with opts ("ro", "rw") on a
// fresh test directory and returns it with a func that unmounts (also run
// when the test ends). It skips only where RequireKernelMount does; the
// kernel refusing img itself fails the test, since then the image is bad.
func MountExt4(t testing.TB, img, opts string) (dir string, unmount func()) {
	t.Helper()
	RequireKernelMount(t, opts)
	dir = t.TempDir()
	if out, err := exec.Command("mount", "-o", mountOpts(opts), "-t", "ext4", img, dir).CombinedOutput(); err != nil {
		t.Fatalf("the kernel refused to mount %s (it mounts a mkfs.ext4 image here): %v\n%s", img, err, out)
	}
	done := false
	unmount = func() {
		if done {
			return
		}
		done = true
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Fatalf("umount %s: %v\n%s", dir, err, out)
		}
	}
	t.Cleanup(unmount)
	return dir, unmount
}
