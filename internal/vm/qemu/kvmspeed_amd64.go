package qemu

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KVM ioctls (linux/kvm.h) and the layouts of what they pass.
const (
	kvmCreateVM          = 0xAE01
	kvmGetVCPUMmapSize   = 0xAE04
	kvmCreateVCPU        = 0xAE41
	kvmSetUserMemRegion  = 0x4020AE46 // struct kvm_userspace_memory_region, 32 bytes
	kvmRun               = 0xAE80
	kvmGetSregs          = 0x8138AE83 // struct kvm_sregs, 312 bytes
	kvmSetSregs          = 0x4138AE84
	kvmSetRegs           = 0x4090AE82 // struct kvm_regs, 144 bytes
	kvmExitIO            = 2
	kvmExitHLT           = 5
	kvmRunExitReasonOff  = 8 // struct kvm_run: exit_reason
	kvmRunImmediateExit  = 1 // struct kvm_run: immediate_exit
	kvmSregsSegmentBytes = 24
)

// speedLoop is the guest's code, in real mode at 0x1000: count ECX down
// from speedIterations, tell the host (OUT to port 0x10), halt.
var speedLoop = []byte{
	0x66, 0xB9, 0, 0, 0, 0, // mov ecx, speedIterations
	0x66, 0x49, // l: dec ecx
	0x75, 0xFC, // jnz l
	0xB0, 0x42, 0xE6, 0x10, // mov al, 0x42; out 0x10, al
	0xF4, // hlt
}

// speedIterations is the loop's length: 20 million instructions, a few
// milliseconds for a CPU running the guest natively, a second or more for
// a "KVM" that emulates every instruction.
const speedIterations = 10_000_000

// KVMSpeed runs a tiny guest through /dev/kvm (one vCPU, 64 KiB of memory,
// a counting loop) and returns how long the loop took, or an error when
// KVM cannot run it within limit. Some nested hypervisors offer a /dev/kvm
// that boots a real kernel slower than QEMU's own TCG emulation, or hangs
// in it: this tells in milliseconds what booting a guest would take
// seconds to show. A vCPU still running at limit is interrupted with a
// signal; one that ignores it is abandoned with its thread.
func KVMSpeed(limit time.Duration) (time.Duration, error) {
	kvm, err := unix.Open(KVMDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", KVMDevice, err)
	}
	vm, err := kvmIoctl(kvm, kvmCreateVM, 0)
	if err != nil {
		unix.Close(kvm)
		return 0, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	mem, err := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		unix.Close(vm)
		unix.Close(kvm)
		return 0, err
	}
	g := &speedGuest{kvm: kvm, vm: vm, cpu: -1, mem: mem}
	if err := g.setup(); err != nil {
		g.close()
		return 0, err
	}

	type result struct {
		took time.Duration
		err  error
	}
	done := make(chan result, 1)
	tid := make(chan int, 1)
	go func() {
		// KVM_RUN runs on this thread until an exit; the signal that
		// interrupts it must reach this thread.
		runtime.LockOSThread()
		tid <- unix.Gettid()
		start := time.Now()
		err := g.run()
		done <- result{time.Since(start), err}
	}()
	t := <-tid
	select {
	case r := <-done:
		g.close()
		return r.took, r.err
	case <-time.After(limit):
	}
	g.run_[kvmRunImmediateExit] = 1
	unix.Tgkill(os.Getpid(), t, unix.SIGURG)
	select {
	case <-done:
		g.close()
	case <-time.After(time.Second):
		// Stuck in the kernel: leave it (and its fds) to the process's end.
	}
	return 0, fmt.Errorf("a guest loop of %d million instructions did not finish within %s under KVM, where a CPU running guests natively takes milliseconds: this KVM runs guests too slowly to use", 2*speedIterations/1_000_000, limit)
}

type speedGuest struct {
	kvm, vm, cpu int
	mem, run_    []byte
}

func (g *speedGuest) setup() error {
	le := binary.LittleEndian
	code := append([]byte(nil), speedLoop...)
	le.PutUint32(code[2:], speedIterations)
	copy(g.mem[0x1000:], code)

	var region [32]byte // slot 0, flags 0, guest address 0, size, host address
	le.PutUint64(region[16:], uint64(len(g.mem)))
	le.PutUint64(region[24:], uint64(uintptr(unsafe.Pointer(&g.mem[0]))))
	if _, err := kvmIoctl(g.vm, kvmSetUserMemRegion, uintptr(unsafe.Pointer(&region[0]))); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	cpu, err := kvmIoctl(g.vm, kvmCreateVCPU, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	g.cpu = cpu
	size, err := kvmIoctl(g.kvm, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if g.run_, err = unix.Mmap(g.cpu, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fmt.Errorf("mapping the vCPU: %w", err)
	}
	// Real mode, code segment at 0: the loop starts at 0x1000.
	var sregs [312]byte
	if _, err := kvmIoctl(g.cpu, kvmGetSregs, uintptr(unsafe.Pointer(&sregs[0]))); err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	le.PutUint64(sregs[0:], 0)  // cs.base
	le.PutUint16(sregs[12:], 0) // cs.selector
	if _, err := kvmIoctl(g.cpu, kvmSetSregs, uintptr(unsafe.Pointer(&sregs[0]))); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	var regs [144]byte
	le.PutUint64(regs[128:], 0x1000) // rip
	le.PutUint64(regs[136:], 2)      // rflags: the reserved bit
	if _, err := kvmIoctl(g.cpu, kvmSetRegs, uintptr(unsafe.Pointer(&regs[0]))); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// run enters the guest until it halts: one I/O exit (the OUT), then HLT.
func (g *speedGuest) run() error {
	for exits := 0; exits < 4; exits++ {
		if _, err := kvmIoctl(g.cpu, kvmRun, 0); err != nil {
			return fmt.Errorf("KVM_RUN: %w", err)
		}
		switch r := binary.LittleEndian.Uint32(g.run_[kvmRunExitReasonOff:]); r {
		case kvmExitHLT:
			return nil
		case kvmExitIO:
		default:
			return fmt.Errorf("KVM_RUN: the guest exited for reason %d", r)
		}
	}
	return fmt.Errorf("KVM_RUN: the guest did not halt")
}

func (g *speedGuest) close() {
	if g.run_ != nil {
		unix.Munmap(g.run_)
	}
	if g.cpu >= 0 {
		unix.Close(g.cpu)
	}
	unix.Munmap(g.mem)
	unix.Close(g.vm)
	unix.Close(g.kvm)
}

func kvmIoctl(fd int, req, arg uintptr) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
