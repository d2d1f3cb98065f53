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
	"os"
	"os/exec"
	"regexp"
	"strconv"
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
	// Binary is the QEMU system emulator; empty means DefaultBinary.
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
func lookBinary(bin string) (string, error) {
	if bin == "" {
		bin = DefaultBinary
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("%s %w: install qemu-system-x86 or set the path to QEMU", bin, ErrNotFound)
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

// normalize fills defaults and checks everything QEMU would otherwise fail
// on with a less specific message, before any process or file exists.
func (c *VMConfig) normalize() error {
	var err error
	if c.Binary, err = lookBinary(c.Binary); err != nil {
		return err
	}
	switch c.Accel {
	case KVM, TCG:
	case "":
		return errors.New("qemu: no accelerator given (resolve \"auto\" with ProbeAccel)")
	default:
		return fmt.Errorf("qemu: unknown accelerator %q (want kvm or tcg)", c.Accel)
	}
	if c.MemMiB == 0 {
		c.MemMiB = 256
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.MemMiB < 0 || c.CPUs < 0 {
		return fmt.Errorf("qemu: invalid memory %d MiB or CPU count %d", c.MemMiB, c.CPUs)
	}
	if c.Kernel == "" && (c.Initrd != "" || c.Append != "") {
		return errors.New("qemu: an initrd or kernel command line needs a kernel")
	}
	if c.Kernel != "" {
		if err := readable("kernel", "", c.Kernel); err != nil {
			return err
		}
	}
	if c.Initrd != "" {
		if err := readable("initrd", "", c.Initrd); err != nil {
			return err
		}
	}
	for i := range c.Disks {
		d := &c.Disks[i]
		if d.Format == "" {
			d.Format = "raw"
		}
		if d.Format != "raw" && d.Format != "qcow2" {
			return fmt.Errorf("qemu: disk %s: unsupported format %q (want raw or qcow2)", d.Path, d.Format)
		}
		if d.Interface == "" {
			d.Interface = "virtio"
		}
		if d.Interface != "virtio" {
			return fmt.Errorf("qemu: disk %s: unsupported interface %q (want virtio)", d.Path, d.Interface)
		}
		check := writable
		if d.ReadOnly || d.Snapshot {
			check = readable
		}
		if err := check("disk", "", d.Path); err != nil {
			return err
		}
	}
	if c.EFI != nil {
		if err := c.EFI.check(); err != nil {
			return err
		}
	}
	if c.AgentSocket != "" && len(c.AgentSocket) > maxSocketPath {
		return fmt.Errorf("qemu: agent socket path %s is %d bytes; unix sockets allow at most %d",
			c.AgentSocket, len(c.AgentSocket), maxSocketPath)
	}
	return nil
}

func (e *EFI) check() error {
	if err := readable("OVMF code", "efi_firmware_code", e.Code); err != nil {
		return err
	}
	if err := writable("OVMF vars", "efi_firmware_vars", e.Vars); err != nil {
		return err
	}
	return sameFlashFamily(e.Code, e.Vars)
}

func readable(what, key, path string) error { return openCheck(what, key, path, os.O_RDONLY) }
func writable(what, key, path string) error { return openCheck(what, key, path, os.O_RDWR) }

func openCheck(what, key, path string, flag int) error {
	if path == "" {
		return &FileError{What: what, Key: key, Path: `""`, Err: errors.New("no path given")}
	}
	f, err := os.OpenFile(path, flag, 0)
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil && fi.IsDir() {
			err = errors.New("is a directory")
		}
		f.Close()
	}
	if err != nil {
		return &FileError{What: what, Key: key, Path: path, Err: err}
	}
	return nil
}

// sameFlashFamily rejects an OVMF code and vars pair from different builds:
// edk2 splits one flash device of a power-of-two size into the two files,
// and a mismatched pair hangs the guest without a message.
func sameFlashFamily(code, vars string) error {
	cs, err := os.Stat(code)
	if err != nil {
		return &FileError{What: "OVMF code", Key: "efi_firmware_code", Path: code, Err: err}
	}
	vs, err := os.Stat(vars)
	if err != nil {
		return &FileError{What: "OVMF vars", Key: "efi_firmware_vars", Path: vars, Err: err}
	}
	if sum := cs.Size() + vs.Size(); sum <= 0 || sum&(sum-1) != 0 {
		return &FileError{What: "OVMF vars", Key: "efi_firmware_vars", Path: vars,
			Err: fmt.Errorf("%d bytes does not match the code file %s (%d bytes): use the vars template of the same OVMF build (e.g. OVMF_CODE_4M.fd with OVMF_VARS_4M.fd)",
				vs.Size(), code, cs.Size())}
	}
	return nil
}

// escapeOpt doubles commas, QEMU's escape inside an option value.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// args builds the QEMU command line. qmpSock is the QMP socket path.
func (c *VMConfig) args(qmpSock string) []string {
	machine := "pc"
	if c.EFI != nil {
		machine = "q35"
	}
	a := []string{
		"-nodefaults", "-no-user-config",
		"-display", "none", "-monitor", "none",
		"-name", "packer-nixos",
		"-machine", machine,
		"-accel", string(c.Accel),
	}
	if c.Accel == TCG {
		a = append(a, "-cpu", "max")
	}
	a = append(a,
		"-m", strconv.Itoa(c.MemMiB),
		"-smp", strconv.Itoa(c.CPUs),
		// -no-reboot makes a guest reset (or a panic with panic=-1) end QEMU
		// instead of looping; the SHUTDOWN event tells the reason.
		"-no-reboot",
		// -S: the guest starts only after QMP is connected, so no event or
		// console byte is missed; Start sends "cont".
		"-S",
		// signal=off: a ^C in the console data is a byte, never a SIGINT.
		"-chardev", "stdio,id=con0,signal=off",
		"-serial", "chardev:con0",
		"-qmp", "unix:"+escapeOpt(qmpSock)+",server=on,wait=off",
	)
	if c.EFI != nil {
		a = append(a,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+escapeOpt(c.EFI.Code),
			"-drive", "if=pflash,format=raw,unit=1,file="+escapeOpt(c.EFI.Vars),
		)
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Append != "" {
			a = append(a, "-append", c.Append)
		}
	}
	for _, d := range c.Disks {
		opt := "file=" + escapeOpt(d.Path) + ",format=" + d.Format + ",if=" + d.Interface
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		if d.Snapshot {
			opt += ",snapshot=on"
		}
		a = append(a, "-drive", opt)
	}
	if c.AgentSocket != "" {
		a = append(a,
			"-device", "virtio-serial-pci,id=vser0",
			"-chardev", "socket,id=agent0,path="+escapeOpt(c.AgentSocket)+",server=on,wait=off",
			"-device", "virtserialport,bus=vser0.0,chardev=agent0,name="+AgentPortName,
		)
	}
	return append(a, c.ExtraArgs...)
}
