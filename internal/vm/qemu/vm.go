package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

const (
	consoleLines   = 256 // console ring size
	stderrLines    = 40
	errorTailLines = 80 // console lines quoted in an ExitError: a whole kernel panic report fits
	eventBuffer    = 64
	// quitGrace is how long Quit waits for an answer and then for the exit.
	quitGrace = 5 * time.Second
	// exitGrace is how long a QEMU whose QMP connection broke may take to
	// exit by itself before it is killed.
	exitGrace = time.Second
)

// ErrShutdownTimeout is wrapped by Shutdown's error when the guest did not
// power off before the deadline and QEMU was quit.
var ErrShutdownTimeout = errors.New("guest did not power off in time")

// ExitError describes a QEMU that ended other than by a clean shutdown.
type ExitError struct {
	// State is the process's exit state; nil if it never started.
	State *os.ProcessState
	// Cause is why it ended, if known: a context error, errKilled, a guest
	// reset or panic reported by QMP, or a startup failure.
	Cause   error
	Stderr  []string // QEMU's own messages
	Console []string // the last guest console lines
}

func (e *ExitError) Error() string {
	var b strings.Builder
	b.WriteString("qemu")
	if e.Cause != nil {
		fmt.Fprintf(&b, ": %v", e.Cause)
	}
	if e.State != nil {
		fmt.Fprintf(&b, " (%s)", e.State)
	}
	quote := func(title string, lines []string) {
		if len(lines) == 0 {
			return
		}
		fmt.Fprintf(&b, "\n%s:", title)
		for _, l := range lines {
			b.WriteString("\n    " + l)
		}
	}
	quote("qemu stderr", e.Stderr)
	quote("last console lines", e.Console)
	return b.String()
}

func (e *ExitError) Unwrap() error { return e.Cause }

var (
	errKilled         = errors.New("killed")
	errUnexpectedExit = errors.New("exited unexpectedly")
)

type vm struct {
	cmd     *exec.Cmd
	cfg     VMConfig
	runDir  string // private dir holding the QMP socket, removed at exit
	qmpSock string

	console *lineRing
	stderr  *lineRing
	events  chan Event

	mon          *qmp.SocketMonitor // set by Start once connected
	connectPhase chan struct{}      // closed when Start stops touching mon
	pumped       chan struct{}      // closed when pumpEvents ends (set with mon)

	mu       sync.Mutex
	exitSeen bool  // the process has exited (maybe not yet reaped)
	cause    error // why we killed it, first reason wins
	reason   string
	err      error // Wait's result

	exited chan struct{} // process reaped
	done   chan struct{} // everything cleaned up
}

func (driver) Start(ctx context.Context, c VMConfig) (VM, error) {
	if err := c.normalize(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	runDir, err := makeRunDir(c.WorkDir)
	if err != nil {
		return nil, err
	}
	v := &vm{
		cfg:          c,
		runDir:       runDir,
		qmpSock:      filepath.Join(runDir, "qmp.sock"),
		console:      newLineRing(consoleLines),
		stderr:       newLineRing(stderrLines),
		events:       make(chan Event, eventBuffer),
		connectPhase: make(chan struct{}),
		exited:       make(chan struct{}),
		done:         make(chan struct{}),
	}
	if err := v.spawn(); err != nil {
		os.RemoveAll(runDir)
		return nil, err
	}
	go func() {
		select {
		case <-ctx.Done():
			v.kill(ctx.Err())
		case <-v.exited:
		}
	}()

	err = v.connect(ctx)
	close(v.connectPhase)
	if err == nil {
		// The guest was held by -S until the event reader was in place.
		_, err = v.run(ctx, "cont", nil)
	}
	if err != nil {
		if ctx.Err() == nil {
			// A broken QMP connection usually means QEMU is exiting on its
			// own: let it, so the error carries its real status.
			select {
			case <-v.exited:
			case <-time.After(exitGrace):
			}
		}
		v.kill(err)
		<-v.done
		return nil, v.startError(err)
	}
	return v, nil
}

// startError is the error of a Start that failed after QEMU ran: always an
// *ExitError, so the caller sees QEMU's stderr and console.
func (v *vm) startError(err error) error {
	var ee *ExitError
	if errors.As(v.err, &ee) {
		if ee.Cause == errUnexpectedExit {
			ee.Cause = errors.New("exited during startup")
		}
		return ee
	}
	return &ExitError{State: v.cmd.ProcessState, Cause: err,
		Stderr: v.stderr.Tail(stderrLines), Console: v.console.Tail(errorTailLines)}
}

func (v *vm) Wait() error {
	<-v.done
	return v.err
}

func (v *vm) Done() <-chan struct{} { return v.done }

func (v *vm) Events() <-chan Event { return v.events }

func (v *vm) PID() int { return v.cmd.Process.Pid }

func (v *vm) ConsoleTail(n int) []string { return v.console.Tail(n) }

func (v *vm) ShutdownReason() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.reason
}

func (v *vm) Kill() {
	v.kill(errKilled)
	<-v.done
}

func (v *vm) Quit() error {
	ctx, cancel := context.WithTimeout(context.Background(), quitGrace)
	defer cancel()
	_, err := v.run(ctx, "quit", nil)
	if err == nil {
		select {
		case <-v.done:
			return nil
		case <-ctx.Done():
			err = errors.New("still running after quit")
		}
	}
	select {
	case <-v.exited:
		<-v.done // the quit raced QEMU's own exit: nothing to kill
		return nil
	default:
	}
	v.kill(errKilled)
	<-v.done
	return fmt.Errorf("qemu: %v; killed", err)
}

func (v *vm) Shutdown(ctx context.Context) error {
	_, err := v.run(ctx, "system_powerdown", nil)
	wait := ctx
	if err != nil {
		// A broken connection means QEMU is going away: don't kill it.
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(context.Background(), exitGrace)
		defer cancel()
	}
	select {
	case <-v.done:
		return nil
	case <-wait.Done():
	}
	select {
	case <-v.exited:
		<-v.done // gone on its own; Wait tells how
		return nil
	default:
	}
	qerr := v.Quit()
	if err != nil && ctx.Err() == nil {
		return errors.Join(err, qerr) // QMP itself failed
	}
	if qerr != nil {
		return fmt.Errorf("%w: %v", ErrShutdownTimeout, qerr)
	}
	return fmt.Errorf("%w: quit over QMP", ErrShutdownTimeout)
}

func (v *vm) Status(ctx context.Context) (string, error) {
	out, err := v.run(ctx, "query-status", nil)
	if err != nil {
		return "", err
	}
	var r struct {
		Return struct {
			Status string `json:"status"`
		} `json:"return"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return "", fmt.Errorf("QMP query-status: %w", err)
	}
	return r.Return.Status, nil
}
