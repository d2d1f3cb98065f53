// Package killtest runs the test binary itself as a child doing one piece
// of work, and kills it with SIGKILL at a chosen moment: what a crash or
// kill -9 leaves behind is then checked by the parent test.
package killtest

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Run starts the test binary (running no test: its TestMain sees env and
// does the work) and kills it after delay. It reports whether it killed
// the child; a child that finished first must have succeeded.
func Run(t testing.TB, env string, delay time.Duration) (killed bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("child: %v: %s", err, stderr.String())
		}
		return false
	case <-time.After(delay):
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
		return true
	}
}
