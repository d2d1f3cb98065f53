package qemu

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// normalize fills defaults and checks everything QEMU would otherwise fail
// on with a less specific message, before any process or file exists.
func (c *VMConfig) normalize() error {
	var err error
	if c.Binary, err = lookArchBinary(c.Binary, c.Arch.OrDefault()); err != nil {
		return err
	}
	switch c.Accel {
	case KVM, TCG:
	case "":
		return errors.New("qemu: no accelerator given (resolve \"auto\" with ProbeAccel)")
	default:
		return fmt.Errorf("qemu: unknown accelerator %q (want kvm or tcg)", c.Accel)
	}
	if arch := c.Arch.OrDefault(); c.Accel == KVM && !arch.Native() {
		return fmt.Errorf("qemu: KVM runs only guests of the host's architecture; an %s guest on this %s host needs TCG", arch.Name, runtime.GOARCH)
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
	arch := c.Arch.OrDefault()
	machine := arch.machine(c.EFI != nil)
	a := []string{
		"-nodefaults", "-no-user-config",
		"-display", "none", "-monitor", "none",
		"-name", "packer-nixos",
		"-machine", machine,
		"-accel", string(c.Accel),
	}
	switch {
	case c.Accel == TCG:
		a = append(a, "-cpu", arch.TCGCPU)
	case arch.Name == "aarch64": // virt has no default CPU model for KVM
		a = append(a, "-cpu", "host")
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
