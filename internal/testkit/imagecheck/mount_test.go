package imagecheck

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// outcome records how a helper ended a fake test: Fatal, Skip or neither.
type outcome struct {
	testing.TB
	failed, skipped bool
	msg             string
}

func (o *outcome) Helper() {}
func (o *outcome) Fatalf(format string, args ...any) {
	o.failed, o.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (o *outcome) Fatal(args ...any) { o.Fatalf("%s", fmt.Sprint(args...)) }
func (o *outcome) Skipf(format string, args ...any) {
	o.skipped, o.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (o *outcome) Skip(args ...any) { o.Skipf("%s", fmt.Sprint(args...)) }

// runFake runs f against a fake TB on its own goroutine (Fatal and Skip end
// it with Goexit, as in the testing package).
func runFake(t *testing.T, f func(tb testing.TB)) *outcome {
	o := &outcome{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(o)
	}()
	<-done
	return o
}

// Finding 10 of issue 11: an image the kernel refuses used to count as a
// skipped test. Where the kernel mounts a mkfs.ext4 image, refusing ours
// must fail the test; a good image mounts.
func TestMountExt4FailsOnImagesTheKernelRejects(t *testing.T) {
	RequireKernelMount(t, "ro")

	good, _ := SparseFile(t, "good.img", 8<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", good).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	o := runFake(t, func(tb testing.TB) {
		dir, unmount := MountExt4(tb, good, "ro")
		if _, err := os.Stat(filepath.Join(dir, "lost+found")); err != nil {
			tb.Errorf("mounted good image: %v", err)
		}
		unmount()
	})
	if o.failed || o.skipped {
		t.Fatalf("mounting a mkfs.ext4 image: failed %v, skipped %v: %s", o.failed, o.skipped, o.msg)
	}

	// A zeroed image has no superblock: the kernel refuses it.
	bad, _ := SparseFile(t, "bad.img", 8<<20)
	o = runFake(t, func(tb testing.TB) { MountExt4(tb, bad, "ro") })
	if !o.failed || o.skipped {
		t.Fatalf("mounting an image the kernel refuses: failed %v, skipped %v (%s); want a failure", o.failed, o.skipped, o.msg)
	}
}
