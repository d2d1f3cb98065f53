// Package qemu drives every QEMU program the plugin runs: the installer VM
// (direct kernel boot) and the VMs that boot finished images from their own
// firmware. QEMU is controlled over QMP (github.com/digitalocean/go-qemu)
// and its serial console is streamed through a pipe.
//
// Machine types: "pc" (i440FX) for SeaBIOS, "q35" when EFI is set. OVMF's
// pflash works on both, but q35 is the machine OVMF is built and tested
// for (and the only one its Secure Boot builds accept, with SMM); i440FX
// is the smallest board SeaBIOS boots a virtio disk from. Both give the
// guest the same virtio-pci disk, so an image installed under one boots
// under the other.
//
// CPU: "-cpu max" under TCG; no -cpu under KVM. On the development host
// "-cpu host" (and so "max", which equals host under KVM) aborts QEMU on an
// MSR assertion, while QEMU's default model does not.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// Accel is a QEMU accelerator.
type Accel string

const (
	KVM Accel = "kvm"
	TCG Accel = "tcg"
)

// AgentPortName is the virtio-serial port name the guest agent looks for
// under /sys/class/virtio-ports/*/name.
const AgentPortName = "org.packer-plugin-nixos.agent"

// DefaultBinary is the QEMU system emulator used when VMConfig.Binary is empty.
const DefaultBinary = "qemu-system-x86_64"

// maxSocketPath is sizeof(sockaddr_un.sun_path) minus the terminating NUL.
const maxSocketPath = 107

// ErrNotFound is wrapped by the error for a missing QEMU binary.
var ErrNotFound = errors.New("not found")

// VMConfig describes one VM.
type VMConfig struct {
	// Arch is the guest's architecture; the zero value is X86_64.
	Arch Arch
	// Binary is the QEMU system emulator; empty means Arch's.
	Binary string
	// Accel is required: ProbeAccel resolves "auto" before Start.
	Accel  Accel
	MemMiB int // default 256
	CPUs   int // default 1

	// Kernel, Initrd and Append boot a kernel directly (the installer VM).
	// An empty Kernel boots from the disks through the firmware.
	Kernel, Initrd, Append string

	Disks []Disk
	// EFI selects OVMF (and the q35 machine); nil boots SeaBIOS on "pc".
	EFI *EFI

	// AgentSocket, when set, is the path of a listening unix socket
	// (at most 107 bytes) wired to the guest's virtio-serial port
	// AgentPortName. QEMU creates it; it is removed when QEMU exits.
	AgentSocket string

	// Console receives the guest's serial output as QEMU writes it. A slow
	// writer slows the guest's console, never loses bytes; nil discards.
	Console io.Writer

	// WorkDir is where the QMP socket lives, in a private subdirectory
	// removed when QEMU exits. When the resulting socket path would exceed
	// the unix socket limit (or WorkDir is empty) a 0700 directory under
	// the system temp dir (or /tmp) is used instead.
	WorkDir string

	// ExtraArgs are appended to the command line as they are.
	ExtraArgs []string
}

// Disk is one drive of the VM.
type Disk struct {
	Path string
	// Format is "raw" (default) or "qcow2"; it is always given to QEMU so it
	// never probes a raw image's contents.
	Format string
	// Interface is "virtio" (default, the only one supported).
	Interface string
	ReadOnly  bool
	// Snapshot discards the guest's writes when QEMU exits.
	Snapshot bool
}

// EFI is the OVMF firmware as two pflash devices.
type EFI struct {
	// Code is attached read-only and never written.
	Code string
	// Vars is the writable variable store: a copy the caller made
	// (CopyVars), which QEMU updates in place.
	Vars string
}

// FileError reports an input file QEMU would fail on. Key names the
// builder option the file comes from, when there is one, so the builder
// can prefix it; Error names only the file.
type FileError struct {
	What string // "OVMF code", "kernel", "disk", ...
	Key  string // "efi_firmware_code", "efi_firmware_vars", or ""
	Path string
	Err  error
}

func (e *FileError) Error() string {
	reason := e.Err
	var pe *fs.PathError
	if errors.As(reason, &pe) {
		reason = pe.Err // the path is already in the message
	}
	return fmt.Sprintf("%s file %s: %v", e.What, e.Path, reason)
}

func (e *FileError) Unwrap() error { return e.Err }

// Driver runs QEMU.
type Driver interface {
	// Start launches the VM and returns once QMP is connected and the guest
	// runs. ctx bounds the VM's whole life: cancelling it kills QEMU.
	Start(ctx context.Context, c VMConfig) (VM, error)
	// Version runs `<binary> --version` and returns e.g. "7.2.22"; binary
	// empty means DefaultBinary.
	Version(ctx context.Context, binary string) (string, error)
}

// VM is a running QEMU process.
type VM interface {
	// Wait returns when QEMU has exited and its sockets and temp files are
	// gone. The error is nil only for a clean exit that was not a guest
	// reset or panic; otherwise it is an *ExitError carrying the status and
	// the last console lines.
	Wait() error
	// Done is closed when Wait would return.
	Done() <-chan struct{}
	// Shutdown presses the ACPI power button and waits for QEMU to exit
	// until ctx ends, then quits it. It returns nil if the guest powered
	// off by itself, an error wrapping ErrShutdownTimeout if it was quit.
	Shutdown(ctx context.Context) error
	// Quit asks QEMU to exit over QMP and kills it if QMP does not answer
	// or QEMU lingers. QEMU is gone when it returns; the error says whether
	// it had to be killed.
	Quit() error
	// Kill sends SIGKILL to QEMU's process group and waits for the cleanup.
	// It is idempotent and safe after exit.
	Kill()
	// Events delivers QMP events. The channel is buffered; when the reader
	// falls behind the oldest events are dropped so QMP never stalls. It is
	// closed when the QMP connection ends.
	Events() <-chan Event
	// ConsoleTail returns up to n of the last console lines (the line being
	// written included), without CRs and terminal escape sequences.
	ConsoleTail(n int) []string
	// Status returns QMP query-status's status ("running", "paused", ...).
	Status(ctx context.Context) (string, error)
	// ShutdownReason is the reason of the last SHUTDOWN event
	// ("guest-shutdown", "guest-reset", "host-qmp-quit", ...), or "".
	ShutdownReason() string
	PID() int
}

// Event is a decoded QMP event.
type Event struct {
	Name string
	Data map[string]any
	Time time.Time
}

// New returns the Driver that runs real QEMU programs.
func New() Driver { return driver{} }

type driver struct{}

// lookBinary resolves bin in PATH with the error a user can act on.
func lookBinary(bin string) (string, error) { return lookArchBinary(bin, X86_64) }

// lookArchBinary finds bin, or arch's emulator when bin is empty.
func lookArchBinary(bin string, arch Arch) (string, error) {
	if bin == "" {
		bin = arch.Binary
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("%s %w: install %s or set the path to QEMU", bin, ErrNotFound, arch.Package)
	}
	return p, nil
}

var versionRE = regexp.MustCompile(`(?m)^QEMU emulator version (\d+\.\d+(?:\.\d+)?)`)

func (driver) Version(ctx context.Context, binary string) (string, error) {
	p, err := lookBinary(binary)
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, p, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %v: %s", p, err, strings.TrimSpace(string(out)))
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version: unexpected output %q", p, firstLine(string(out)))
	}
	return string(m[1]), nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
