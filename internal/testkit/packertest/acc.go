// Package packertest is test support for acceptance tests: it runs a template
// through the real packer binary with the SDK's acctest harness and hands
// back the exit status and log, since failing builds are expected results in
// many tests, not harness errors.
package packertest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/acctest"
)

// Result is what one `packer build` left behind.
type Result struct {
	Exit int
	Log  string // the PACKER_LOG file: the UI output and the plugins' logs
}

// Run builds tmpl (component type typ, for the harness) with the packer on
// PATH; the test is skipped unless PACKER_ACC is set (make testacc).
func Run(t *testing.T, name, typ, tmpl string, extraArgs ...string) Result {
	t.Helper()
	if os.Getenv(acctest.TestEnvVar) == "" {
		t.Skipf("acceptance test: set %s=1 (make testacc)", acctest.TestEnvVar)
	}
	var res Result
	acctest.TestPlugin(t, &acctest.PluginTestCase{
		Name:           name,
		Type:           typ,
		Template:       tmpl,
		BuildExtraArgs: extraArgs,
		Check: func(cmd *exec.Cmd, logfile string) error {
			res.Exit = cmd.ProcessState.ExitCode()
			b, err := os.ReadFile(logfile)
			res.Log = string(b)
			return err
		},
	})
	return res
}

// MustSucceed fails the test with the build's log unless it succeeded.
func (r Result) MustSucceed(t *testing.T) {
	t.Helper()
	if r.Exit != 0 {
		t.Fatalf("packer build exited %d:\n%s", r.Exit, Tail(r.Log, 6000))
	}
}

// Tail keeps the last n bytes of s, for error messages.
func Tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Template is a template with one nixos-image source named name (its
// attributes in source) and a build of it whose blocks are build.
func Template(name, source, build string) string {
	return fmt.Sprintf(`packer {
  required_plugins {
    nixos = {
      source  = "github.com/packer-plugin-nixos/nixos"
      version = ">= 0.1.0"
    }
  }
}

source "nixos-image" %q {
%s
}

build {
  sources = ["source.nixos-image.%s"]
%s
}
`, name, source, name, build)
}

// HCLList renders strings as an HCL list.
func HCLList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Has reports whether the log holds s, whitespace runs counting as one
// space: Packer wraps long error messages.
func (r Result) Has(s string) bool {
	return strings.Contains(strings.Join(strings.Fields(r.Log), " "), strings.Join(strings.Fields(s), " "))
}

// interruptGrace is how long a build may take to stop after Ctrl-C: an
// install-mode build's cleanup stops QEMU (seconds), nothing takes minutes.
const interruptGrace = 3 * time.Minute

// Interrupt runs packer build on tmpl, sends Ctrl-C to its process group
// (as a terminal does: packer, its panicwrap child and the plugins) once a
// line holding trigger appears and delay has passed, and waits for the
// build to end. It fails the test unless the build failed, said it was
// cancelled, and left none of its processes running. It returns the output.
func Interrupt(t *testing.T, tmpl, trigger string, delay time.Duration) string {
	t.Helper()
	if os.Getenv(acctest.TestEnvVar) == "" {
		t.Skipf("acceptance test: set %s=1 (make testacc)", acctest.TestEnvVar)
	}
	dir := t.TempDir()
	tmplPath := filepath.Join(dir, "interrupt.pkr.hcl")
	if err := os.WriteFile(tmplPath, []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "packer.log")
	cmd := exec.Command("packer", "build", tmplPath)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PACKER_LOG=1", "PACKER_LOG_PATH="+logPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	sc := bufio.NewScanner(stdout)
	seen := false
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), trigger) {
			seen = true
			break
		}
	}
	if !seen {
		cmd.Wait()
		t.Fatalf("the build never printed %q:\n%s", trigger, log.String())
	}
	time.Sleep(delay)
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	// A build that does not end after Ctrl-C is this test's failure, not
	// the suite's timeout: the plugins are asked for their goroutines
	// (SIGQUIT makes a Go program print them to stderr, which Packer logs),
	// then everything is killed and the test fails with the log.
	hung := time.AfterFunc(interruptGrace, func() {
		if out, _ := exec.Command("pgrep", "-g", fmt.Sprint(cmd.Process.Pid), "-f", "packer-plugin-").Output(); len(out) > 0 {
			for _, pid := range strings.Fields(string(out)) {
				exec.Command("kill", "-QUIT", pid).Run()
			}
			time.Sleep(3 * time.Second)
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
	}
	if !hung.Stop() {
		cmd.Wait()
		plog, _ := os.ReadFile(logPath)
		t.Fatalf("packer build still running %v after Ctrl-C; killed. Output:\n%s\nPacker's log:\n%s", interruptGrace, log.String(), Tail(string(plog), 60000))
	}
	if err := cmd.Wait(); err == nil {
		t.Fatalf("packer build succeeded despite the interrupt:\n%s", log.String())
	}
	if !strings.Contains(log.String(), "cancel") && !strings.Contains(log.String(), "Interrupt") {
		t.Errorf("no cancellation in the output:\n%s", log.String())
	}
	if procs, _ := exec.Command("pgrep", "-g", fmt.Sprint(cmd.Process.Pid)).Output(); len(procs) > 0 {
		t.Errorf("processes of the build left running: %s", procs)
	}
	return log.String()
}
