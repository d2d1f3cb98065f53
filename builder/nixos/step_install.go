package nixos

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentclient"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

// stepInstall boots the installer VM on the system's own kernel with the
// guest agent as /init, and has it do what nixos-install and nixos-enter
// do after the files are in place: activate the system and run
// switch-to-configuration boot. The closure is already on the disk; the VM
// only runs the target's own tools.
type stepInstall struct {
	phases []string // "name duration", for the summary line
	mark   time.Time
	start  time.Time

	ctx       context.Context // the VM's life
	cancel    context.CancelFunc
	stopWatch func()
	timer     *time.Timer
	timedOut  atomic.Bool
	dir       string
	vm        qemu.VM
	client    *agentclient.Client
	vars      string // the EFI variable store being written, until it is final
	espDir    string // where the ESP is mounted, relative to the root; "" if it is not
}

// tcgSlowdown scales install_timeout under TCG, which emulates every
// instruction.
const tcgSlowdown = 5

// guestClockMin is the earliest time the installer VM's clock starts at
// (2000-01-01): firmware takes two-digit RTC years as 20xx.
const guestClockMin = 946684800

// installerCmdline is the installer kernel's command line; none of it
// changes what the installer writes. quiet: every console line costs a
// serial port's worth of emulated I/O under TCG. cryptomgr.notests: the
// kernel's crypto self-tests took 0.45 s of a TCG boot (crypto_kdf108_init
// and crypto_algapi_init alone), and the installer's crypto is only ext4's
// checksums. mitigations=off: the VM runs nothing but the system's own
// tools, alone, and the speculation barriers cost TCG about 0.1-0.2 s of
// activation and boot loader installation. rodata=off: no read-only kernel
// mappings, so no W+X walk of the page tables (0.12 s under TCG). Not
// initcall_blacklist: it looks up every initcall's symbol name, which
// costs more than it skips. The architecture adds its console and the
// parameters only its kernel knows (qemu.Arch.KernelArgs).
func installerCmdline(a qemu.Arch) string {
	a = a.OrDefault() // the zero Arch: a toplevel made by hand in a test
	cmdline := "console=" + a.Console + " panic=-1 quiet cryptomgr.notests mitigations=off rodata=off"
	if a.KernelArgs != "" {
		cmdline += " " + a.KernelArgs
	}
	return cmdline
}

// EFIVarsFile is the name of the EFI variable store touch_efi_vars keeps.
const EFIVarsFile = "efi-vars.fd"

func (s *stepInstall) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	c := state.Get("config").(*Config)
	ui := state.Get("ui").(packersdk.Ui)
	p := state.Get("plan").(*plan)
	system := state.Get("system").(*toplevel)
	driver := state.Get("qemu").(qemu.Driver)
	raw := state.Get("raw_image").(string)
	start := time.Now()

	s.mark = start
	// The agent's socket lives here: a long TMPDIR falls back to /tmp.
	dir, err := qemu.SocketDir("packer-nixos-vm-", "agent.sock")
	if err != nil {
		return halt(state, err)
	}
	s.dir = dir
	files := state.Get("installer_files").(*installerFiles)
	initrdPath, err := files.initrd.wait()
	if err != nil {
		return halt(state, err)
	}
	log.Printf("installer initrd ready after %v", time.Since(start).Round(time.Millisecond))

	console := newLineWriter(func(line string) { ui.Message("installer: " + line) })
	defer console.Flush()
	sock := filepath.Join(dir, "agent.sock")
	vmc := qemu.VMConfig{
		Arch:        system.arch,
		Binary:      c.QemuBinary,
		Accel:       qemu.Accel(c.Accelerator),
		MemMiB:      c.MemSize,
		Kernel:      system.kernel,
		Initrd:      initrdPath,
		Append:      installerCmdline(system.arch),
		Disks:       []qemu.Disk{{Path: raw, Format: "raw"}},
		AgentSocket: sock,
		Console:     console,
		WorkDir:     dir,
	}
	if c.TouchEFIVars {
		s.vars = filepath.Join(c.OutputDir, "."+EFIVarsFile+".partial")
		if err := qemu.CopyVars(c.EFIFirmwareVars, s.vars); err != nil {
			return halt(state, fmt.Errorf("efi_firmware_vars: %w", err))
		}
		vmc.EFI = &qemu.EFI{Code: c.EFIFirmwareCode, Vars: s.vars}
	}
	if *c.Deterministic {
		// The guest's clock starts at source_date_epoch, so what the guest
		// writes carries times near it rather than today's. Not before
		// 2000: OVMF reads an RTC year of 70 as 2070.
		clock := time.Unix(max(p.epoch, guestClockMin), 0).UTC()
		vmc.ExtraArgs = []string{"-rtc", "base=" + clock.Format("2006-01-02T15:04:05") + ",clock=vm"}
	}
	// The VM lives within runCtx; install_timeout starts once the
	// accelerator is known, since TCG gets more of it.
	// It outlives Run: the VM stays up while the provisioners run, until
	// stepFinishInstall powers it off (or Cleanup kills it).
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	stop := context.AfterFunc(ctx, cancel) // Packer's cancellation still reaches the VM
	s.stopWatch = func() { stop() }
	startBudget := func(accel qemu.Accel) {
		budget := c.InstallTimeout
		if accel == qemu.TCG {
			budget *= tcgSlowdown
		}
		s.timer = time.AfterFunc(budget, func() { s.timedOut.Store(true); cancel() })
	}

	ready := func(ctx context.Context) error {
		cl, err := agentclient.Dial(ctx, sock)
		if err != nil {
			return err
		}
		info, err := cl.Hello(ctx)
		if err != nil {
			cl.Close()
			return err
		}
		s.client = cl
		ui.Say(fmt.Sprintf("Installer VM up: agent %s, kernel %s, %.1f s after boot", info.Version, info.Kernel, info.Uptime))
		if len(info.ModuleErrors) > 0 {
			ui.Message("installer: modules that failed to load: " + strings.Join(info.ModuleErrors, ", "))
		}
		return nil
	}

	accelerator := c.Accelerator
	if accelerator == "auto" && !system.arch.OrDefault().Native() {
		// Another architecture's guest: TCG is the only choice, no probe.
		accelerator, vmc.Accel = "tcg", qemu.TCG
	}
	if accelerator == "auto" {
		ui.Say(fmt.Sprintf("Booting the installer VM (%d MiB), trying KVM for up to %s...", c.MemSize, c.KVMProbeTimeout))
		probe, err := qemu.ProbeAccel(runCtx, driver, vmc, ready, c.KVMProbeTimeout)
		if err != nil {
			return halt(state, fmt.Errorf("starting the installer VM: %w", err))
		}
		startBudget(probe.Accel)
		if probe.Accel == qemu.KVM {
			s.vm = probe.VM
		} else {
			ui.Error("Not using KVM: " + probe.Reason)
			vmc.Accel = qemu.TCG
		}
	}
	if s.vm == nil {
		if accelerator != "auto" {
			ui.Say(fmt.Sprintf("Booting the installer VM (%s %s, %d MiB)...", system.arch.OrDefault().Name, vmc.Accel, c.MemSize))
			startBudget(vmc.Accel)
		}
		s.pvhKernel(state, ui, &vmc)
		if s.vm, err = driver.Start(runCtx, vmc); err != nil {
			return halt(state, fmt.Errorf("starting the installer VM: %w", err))
		}
		readyCtx, cancelReady := context.WithTimeout(runCtx, 2*time.Minute)
		// Read here, not in the goroutine: stepFinishInstall clears s.vm.
		vmDone := s.vm.Done()
		go func() { // a VM that dies ends the wait at once
			select {
			case <-vmDone:
				cancelReady()
			case <-readyCtx.Done():
			}
		}()
		err := ready(readyCtx)
		cancelReady()
		if err != nil {
			return halt(state, s.vmError("the installer VM's agent did not answer", err))
		}
	}

	s.phase("boot")
	s.ctx, s.start = runCtx, start
	if err := s.install(runCtx, ui, c, p, system); err != nil {
		return halt(state, s.vmError("installing", s.timeoutError(c, err)))
	}
	// Packer's provisioners run next, in the installed system.
	state.Put("communicator", &guestComm{ctx: runCtx, client: s.client})
	state.Put("generated_data", map[string]interface{}{stageops.GeneratedKey: stageops.Install})
	state.Put("installer", s)
	return multistep.ActionContinue
}

// pvhKernel boots the kernel stepPrepareInstaller unpacked on the host under
// TCG without firmware: TCG would emulate the bzImage's own decompressor
// (seconds for an xz kernel) where the host takes a fraction of that. OVMF
// boots only a bzImage (EFI stub), and under KVM unpacking costs the guest
// little, so both keep it. Any doubt about the bzImage keeps it too.
func (s *stepInstall) pvhKernel(state multistep.StateBag, ui packersdk.Ui, vmc *qemu.VMConfig) {
	k := state.Get("installer_files").(*installerFiles).kernel
	if k == nil || vmc.Accel != qemu.TCG || vmc.EFI != nil {
		return
	}
	waited := time.Now()
	path, err := k.wait()
	log.Printf("installer kernel: waited %v for its unpacking", time.Since(waited).Round(time.Millisecond))
	if err != nil {
		ui.Message("installer: booting the bzImage as it is: " + err.Error())
		return
	}
	vmc.Kernel = path
}

// timeoutError says so when install_timeout ended the installer.
func (s *stepInstall) timeoutError(c *Config, err error) error {
	if s.timedOut.Load() {
		return fmt.Errorf("install_timeout (%s, ×%d under TCG) ran out: %w", c.InstallTimeout, tcgSlowdown, err)
	}
	return err
}

// install mounts the target, activates it and installs the boot loader.
func (s *stepInstall) install(ctx context.Context, ui packersdk.Ui, c *Config, p *plan, system *toplevel) error {
	cl := s.client
	rootDev := "/dev/vda"
	if p.layout.Type != disk.None {
		rootDev = fmt.Sprintf("/dev/vda%d", partIndex(p.layout, disk.RoleRoot))
	}
	if err := cl.Mount(ctx, protocol.MountRequest{Source: rootDev, Target: guestRoot, FSType: c.FSType}); err != nil {
		return err
	}
	// The ESP and XBOOTLDR go where the system mounts them: its boot
	// loader's installer checks that they are mounted there.
	for _, m := range system.bootMounts(p.layout.Type) {
		if _, ok := p.layout.Find(m.role); !ok {
			continue
		}
		dev := fmt.Sprintf("/dev/vda%d", partIndex(p.layout, m.role))
		if err := cl.Mount(ctx, protocol.MountRequest{Source: dev, Target: guestRoot + "/" + m.dir, FSType: "vfat", Options: "umask=0077"}); err != nil {
			return err
		}
		if m.role == disk.RoleESP {
			s.espDir = m.dir
		}
	}
	if err := cl.BindSystem(ctx, protocol.BindSystemRequest{Root: guestRoot, Tmp: true, EFIVars: c.TouchEFIVars, BlockLinks: true}); err != nil {
		return err
	}

	env := installEnv(*c.Deterministic)
	out := newLineWriter(func(line string) { ui.Message("  " + line) })
	defer out.Flush()
	ui.Say("Activating the system...")
	status, err := cl.Exec(ctx, protocol.ExecRequest{Argv: []string{systemProfile + "/activate"}, Env: activateEnv(env), Chroot: guestRoot}, out, out)
	if err != nil {
		return fmt.Errorf("activate: %w", err)
	}
	if status != 0 {
		// nixos-enter goes on too: activation in a chroot, with no systemd
		// running, commonly fails some of its snippets.
		ui.Error(fmt.Sprintf("Activation exited with status %d; continuing, as nixos-enter does", status))
	}
	// nixos-enter then lets systemd-tmpfiles create what the system's
	// tmpfiles.d asks for (/var, /tmp contents...), where the system has it.
	if system.has("sw/bin/systemd-tmpfiles") {
		status, err := cl.Exec(ctx, protocol.ExecRequest{Argv: []string{systemProfile + "/sw/bin/systemd-tmpfiles", "--create", "--remove", "-E"}, Env: env, Chroot: guestRoot}, out, out)
		if err != nil {
			return fmt.Errorf("systemd-tmpfiles: %w", err)
		}
		if status != 0 {
			ui.Message(fmt.Sprintf("systemd-tmpfiles exited with status %d; continuing, as nixos-enter does", status))
		}
	}
	s.phase("activation")
	if !*c.InstallBootloader {
		// As nixos-install --no-bootloader: switch-to-configuration boot
		// would install it (or, without NIXOS_INSTALL_BOOTLOADER, fail to
		// find the one it should update), so it does not run at all.
		ui.Say("Not installing a boot loader (install_bootloader = false), as nixos-install --no-bootloader")
		return nil
	}
	if err := linkDevices(ctx, ui, cl, system, env, out); err != nil {
		return err
	}
	sctx := "switch-to-configuration boot"
	env = append(env, "NIXOS_INSTALL_BOOTLOADER=1")
	ui.Say("Installing the boot loader (switch-to-configuration boot)...")
	status, err = cl.Exec(ctx, protocol.ExecRequest{Argv: []string{systemProfile + "/bin/switch-to-configuration", "boot"}, Env: env, Chroot: guestRoot}, out, out)
	if err != nil {
		return fmt.Errorf("%s: %w", sctx, err)
	}
	if status != 0 {
		return fmt.Errorf("%s exited with status %d", sctx, status)
	}
	s.phase("boot loader")
	return nil
}

// linkDevices makes the devices the system's GRUB installs onto (such as
// /dev/sda) links to the VM's disk, as make-disk-image does, with the
// system's own mkdir and ln: the installer's /dev is the VM's devtmpfs.
func linkDevices(ctx context.Context, ui packersdk.Ui, cl *agentclient.Client, system *toplevel, env []string, out io.Writer) error {
	for _, dev := range system.deviceLinks() {
		ui.Say(fmt.Sprintf("Linking %s to the VM's disk %s for GRUB...", dev, installerDisk))
		for _, argv := range [][]string{
			{systemProfile + "/sw/bin/mkdir", "-p", path.Dir(dev)},
			{systemProfile + "/sw/bin/ln", "-sfn", installerDisk, dev},
		} {
			status, err := cl.Exec(ctx, protocol.ExecRequest{Argv: argv, Env: env, Chroot: guestRoot}, out, out)
			if err == nil && status != 0 {
				err = fmt.Errorf("exited with status %d", status)
			}
			if err != nil {
				return fmt.Errorf("linking GRUB's device %s to %s: %s: %w", dev, installerDisk, strings.Join(argv, " "), err)
			}
		}
	}
	return nil
}

// phase records how long the phase that ends now took.
func (s *stepInstall) phase(name string) {
	now := time.Now()
	s.phases = append(s.phases, fmt.Sprintf("%s %s", name, now.Sub(s.mark).Round(100*time.Millisecond)))
	s.mark = now
}

// vmError adds the VM's last console lines to err, which is what tells a
// user why an installer died.
func (s *stepInstall) vmError(what string, err error) error {
	if s.vm == nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	tail := s.vm.ConsoleTail(20)
	for i, l := range tail {
		tail[i] = uiSafe(l)
	}
	return fmt.Errorf("%s: %w\nlast console lines:\n  %s", what, err, strings.Join(tail, "\n  "))
}

func (s *stepInstall) Cleanup(multistep.StateBag) {
	if s.client != nil {
		s.client.Close()
	}
	if s.vm != nil {
		s.vm.Kill()
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.stopWatch != nil {
		s.stopWatch()
	}
	if s.cancel != nil {
		s.cancel()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
	if s.vars != "" {
		os.Remove(s.vars)
	}
}
