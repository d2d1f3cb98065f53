package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"
)

const (
	consoleLines   = 256 // console ring size
	stderrLines    = 40
	errorTailLines = 80 // console lines quoted in an ExitError: a whole kernel panic report fits
	eventBuffer    = 64
	qmpDialTimeout = time.Second
	qmpRetry       = 20 * time.Millisecond
	// qmpHandshake bounds the QMP greeting and capabilities exchange once
	// the socket accepted: QEMU answers in milliseconds unless it is stuck.
	qmpHandshake = 30 * time.Second
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

// makeRunDir creates the private directory for the QMP socket: in workDir
// when the socket path fits a sockaddr_un, else in a short temp dir.
func makeRunDir(workDir string) (string, error) {
	// "/qemu-" + MkdirTemp's 10 random digits + "/qmp.sock"
	const suffix = len("/qemu-1234567890/qmp.sock")
	for _, base := range []string{workDir, os.TempDir(), "/tmp"} {
		if base == "" || !filepath.IsAbs(base) && base != workDir {
			continue
		}
		if abs, err := filepath.Abs(base); err == nil && len(abs)+suffix <= maxSocketPath {
			d, err := os.MkdirTemp(abs, "qemu-")
			if err != nil {
				return "", fmt.Errorf("qemu: creating socket directory: %w", err)
			}
			return d, nil // MkdirTemp makes it 0700
		}
	}
	return "", errors.New("qemu: no directory short enough for a unix socket (set TMPDIR to a short path)")
}

func (v *vm) spawn() error {
	outR, outW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return fmt.Errorf("qemu: %w", err)
	}
	cmd := exec.Command(v.cfg.Binary, v.cfg.args(v.qmpSock)...)
	// Pipes as *os.File: QEMU writes straight into them, exec starts no
	// copying goroutines, so Wait returns as soon as QEMU exits.
	cmd.Stdout, cmd.Stderr = outW, errW
	// snapshot=on overlays and any other QEMU temp file land in runDir,
	// which goes away with it, even after SIGKILL.
	cmd.Env = append(os.Environ(), "TMPDIR="+v.runDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group: the terminal's ^C reaches Packer, which then stops
		// QEMU through us, in order.
		Setpgid: true,
		// Dies with the plugin if the plugin is killed outright.
		Pdeathsig: syscall.SIGKILL,
	}
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return fmt.Errorf("qemu: starting %s: %w", v.cfg.Binary, err)
	}
	v.cmd = cmd

	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		copyConsole(outR, v.cfg.Console, v.console)
		outR.Close()
	}()
	go func() {
		defer readers.Done()
		copyConsole(errR, nil, v.stderr)
		errR.Close()
	}()
	go v.reap(&readers)
	return nil
}

// copyConsole forwards chunks as they arrive (a prompt without a newline
// is not held back) and feeds the line ring.
func copyConsole(r io.Reader, w io.Writer, ring *lineRing) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			ring.Write(buf[:n])
			if w != nil {
				if _, werr := w.Write(buf[:n]); werr != nil {
					w = nil // keep draining so QEMU never blocks on the pipe
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// reap waits for QEMU, then removes what it leaves behind.
func (v *vm) reap(readers *sync.WaitGroup) {
	pid := v.cmd.Process.Pid
	// Observe the exit without reaping, so kill() can signal the process
	// group until exitSeen is set: the PID cannot be reused before Wait.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	v.mu.Lock()
	v.exitSeen = true
	v.mu.Unlock()
	_ = v.cmd.Wait()
	close(v.exited)

	readers.Wait()
	<-v.connectPhase
	if v.mon != nil {
		// QEMU closed its end; this ends go-qemu's reader and our event pump.
		_ = v.mon.Disconnect()
	}
	if v.cfg.AgentSocket != "" {
		removeSocket(v.cfg.AgentSocket)
	}
	_ = os.RemoveAll(v.runDir)

	v.mu.Lock()
	v.err = v.exitError()
	v.mu.Unlock()
	close(v.done)
}

// exitError is Wait's result; v.mu is held.
func (v *vm) exitError() error {
	st := v.cmd.ProcessState
	cause := v.cause
	if cause == nil {
		switch v.reason {
		case "guest-reset", "guest-panic":
			// -no-reboot turned these into an exit with status 0.
			cause = fmt.Errorf("guest ended with %s", v.reason)
		}
	}
	if cause == nil && st.Success() {
		return nil
	}
	if cause == nil {
		cause = errUnexpectedExit
	}
	return &ExitError{
		State:   st,
		Cause:   cause,
		Stderr:  v.stderr.Tail(stderrLines),
		Console: v.console.Tail(errorTailLines),
	}
}

// removeSocket removes path only if it is a socket: the caller chose the
// path, and a file that QEMU did not make there is not ours to delete.
func removeSocket(path string) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path)
	}
}

// kill SIGKILLs QEMU's process group once, recording why.
func (v *vm) kill(cause error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.exitSeen {
		return
	}
	if v.cause == nil {
		v.cause = cause
	}
	_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
}

// connect dials the QMP socket until QEMU has created it, then does the
// handshake and starts the event pump.
func (v *vm) connect(ctx context.Context) error {
	var mon *qmp.SocketMonitor
	for {
		var err error
		mon, err = qmp.NewSocketMonitor("unix", v.qmpSock, qmpDialTimeout)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.exited:
			return errors.New("exited before its QMP socket was ready")
		case <-time.After(qmpRetry):
		}
	}
	// go-qemu's handshake has no deadline: on failure we close our end,
	// which ends it whatever state QEMU is in.
	hs := make(chan error, 1)
	go func() { hs <- mon.Connect() }()
	timer := time.NewTimer(qmpHandshake)
	defer timer.Stop()
	var err error
	finished := false // whether hs has been received from
	select {
	case err = <-hs:
		finished = true
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = errors.New("QMP handshake timed out")
	case <-v.exited:
		err = errors.New("exited during the QMP handshake")
	}
	if err != nil { // Start decides whether QEMU must be killed
		if !finished {
			select {
			case <-hs:
			default:
				mon.Disconnect() // closing our end ends the blocked handshake
				<-hs
			}
		}
		mon.Disconnect()
		if errors.Is(err, io.EOF) {
			err = errors.New("exited during the QMP handshake")
		}
		return fmt.Errorf("QMP: %w", err)
	}
	// Events right away: go-qemu drops events until someone listens.
	src, err := mon.Events(context.Background())
	if err != nil {
		mon.Disconnect()
		return fmt.Errorf("QMP events: %w", err)
	}
	v.mon = mon
	go v.pumpEvents(src)
	return nil
}

// pumpEvents drains go-qemu's unbuffered channel, which otherwise blocks
// its reader and with it every QMP command.
func (v *vm) pumpEvents(src <-chan qmp.Event) {
	defer close(v.events)
	for e := range src {
		ev := Event{
			Name: e.Event,
			Data: e.Data,
			Time: time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000),
		}
		if ev.Name == "SHUTDOWN" {
			r, _ := ev.Data["reason"].(string)
			v.mu.Lock()
			v.reason = r
			v.mu.Unlock()
		}
		for {
			select {
			case v.events <- ev:
			default:
				select { // full: drop the oldest and retry
				case <-v.events:
				default:
				}
				continue
			}
			break
		}
	}
}

// run executes one QMP command, bounded by ctx and by QEMU's life: go-qemu's
// Run has no timeout of its own.
func (v *vm) run(ctx context.Context, cmd string, args any) ([]byte, error) {
	if v.mon == nil {
		return nil, errors.New("QMP not connected")
	}
	b, err := json.Marshal(qmp.Command{Execute: cmd, Args: args})
	if err != nil {
		return nil, err
	}
	type result struct {
		out []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		out, err := v.mon.Run(b)
		ch <- result{out, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, r.err)
		}
		return r.out, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("QMP %s: %w", cmd, ctx.Err())
	case <-v.exited:
		return nil, fmt.Errorf("QMP %s: QEMU exited", cmd)
	}
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
