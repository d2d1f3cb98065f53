package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentclient"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/initrd"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/kmod"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

var (
	initrdOnce sync.Once
	initrdPath string
	kernelPath string
	agentPath  string // the static test agent
	modulesDir string // the host kernel's
	initrdErr  error
)

// testInitrd builds the static test agent and an initrd for the host's
// kernel once per test binary.
func testInitrd(t *testing.T) (kernel, initrdFile string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots QEMU")
	}
	requireRoot(t)
	imagecheck.RequireTool(t, "qemu-system-x86_64", "mkfs.ext4")
	initrdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "guest-initrd-")
		if err != nil {
			initrdErr = err
			return
		}
		if kernelPath, modulesDir, initrdErr = kmod.HostKernel(); initrdErr != nil {
			return
		}
		agent := filepath.Join(dir, "agent")
		agentPath = agent
		build := exec.Command("go", "build", "-trimpath", "-o", agent, "github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentbin/agent")
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
		if out, err := build.CombinedOutput(); err != nil {
			initrdErr = errors.New("building the test agent: " + err.Error() + "\n" + string(out))
			return
		}
		initrdPath = filepath.Join(dir, "initrd.gz")
		f, err := os.Create(initrdPath)
		if err != nil {
			initrdErr = err
			return
		}
		defer f.Close()
		start := time.Now()
		initrdErr = initrd.Build(f, initrd.Options{Agent: agent, ModulesDir: modulesDir})
		st, _ := f.Stat()
		ast, _ := os.Stat(agent)
		t.Logf("initrd: %d bytes (agent %d bytes uncompressed), built in %v", st.Size(), ast.Size(), time.Since(start).Round(time.Millisecond))
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return kernelPath, initrdPath
}

// rootImage is an ext4 image holding busybox as bin/busybox and bin/sh.
func rootImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"sh", "cat", "sleep", "stat"} {
		if err := os.Symlink("busybox", filepath.Join(tree, "bin", n)); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "root.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

// console collects the VM's serial output.
type console struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

type vm struct {
	cmd     *exec.Cmd
	sock    string
	console *console
	exited  chan error
	started time.Time
	image   string
}

func bootVM(t *testing.T) *vm {
	t.Helper()
	kernel, initrd := testInitrd(t)
	return bootVMWith(t, kernel, initrd)
}

// bootVMWith boots kernel and initrd with a root image on /dev/vda.
func bootVMWith(t *testing.T, kernel, initrd string) *vm {
	t.Helper()
	img := rootImage(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-display", "none",
		"-no-reboot", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet",
		"-serial", "stdio", "-monitor", "none",
		"-drive", "file="+img+",format=raw,if=virtio",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+sock+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+protocol.PortName)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	v := &vm{cmd: cmd, sock: sock, console: &console{}, exited: make(chan error, 1), started: time.Now(), image: img}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			v.console.mu.Lock()
			v.console.buf.WriteString(sc.Text() + "\n")
			v.console.mu.Unlock()
		}
	}()
	go func() {
		<-readDone
		v.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-readDone
		if t.Failed() {
			t.Logf("console:\n%s", v.console.String())
		}
	})
	return v
}

func (v *vm) dial(t *testing.T, ctx context.Context) *agentclient.Client {
	t.Helper()
	c, err := agentclient.Dial(ctx, v.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	info, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.ModuleErrors) > 0 {
		t.Errorf("module errors: %q", info.ModuleErrors)
	}
	t.Logf("hello %v after QEMU start: %+v", time.Since(v.started).Round(time.Millisecond), *info)
	return c
}

func TestQEMU(t *testing.T) {
	t.Parallel()
	v := bootVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := v.dial(t, ctx)

	if err := c.Mount(ctx, protocol.MountRequest{Source: "/dev/vda", Target: "/mnt", FSType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	// The agent survives the host going away and serves the next one.
	c.Close()
	c = v.dial(t, ctx)
	if err := c.BindSystem(ctx, protocol.BindSystemRequest{Root: "/mnt", Tmp: true, BlockLinks: true}); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	// What the installer's tools find without udev or a network setup:
	// the disk's /dev/block link (bootctl) and lo up with 127.0.0.1
	// (switch-to-configuration-ng's syslog).
	st, err := c.Exec(ctx, protocol.ExecRequest{Argv: []string{"/bin/sh", "-c", "busybox readlink /dev/block/$(cat /sys/class/block/vda/dev); busybox ip -4 addr show dev lo"}, Chroot: "/mnt"}, &out, &errb)
	if err != nil || st != 0 || !strings.HasPrefix(out.String(), "../vda\n") || !strings.Contains(out.String(), ",UP,") || !strings.Contains(out.String(), "inet 127.0.0.1/8 ") {
		t.Errorf("/dev/block link and lo: %v status %d stdout %q stderr %q", err, st, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	st, err = c.Exec(ctx, protocol.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo hi; echo err >&2; exit 3"}, Chroot: "/mnt"}, &out, &errb)
	if err != nil || st != 3 || out.String() != "hi\n" || errb.String() != "err\n" {
		t.Fatalf("exec: %v status %d stdout %q stderr %q", err, st, out.String(), errb.String())
	}

	data := bytes.Repeat([]byte("guest agent upload\n"), 50000) // ~1 MB
	start := time.Now()
	if err := c.Upload(ctx, "/mnt", "/etc/uploaded", 0o640, 0, 0, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	up := time.Since(start)
	var got bytes.Buffer
	start = time.Now()
	fi, err := c.Download(ctx, "/mnt", "/etc/uploaded", &got)
	if err != nil || !bytes.Equal(got.Bytes(), data) || fi.Mode != 0o640 {
		t.Fatalf("download: %+v %v, equal=%v", fi, err, bytes.Equal(got.Bytes(), data))
	}
	t.Logf("%d bytes: upload %v, download %v", len(data), up.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	out.Reset()
	if st, err := c.Exec(ctx, protocol.ExecRequest{Argv: []string{"sh", "-c", "stat -c %a /etc/uploaded; cat /etc/uploaded | wc -c"}, Chroot: "/mnt", Env: []string{"PATH=/bin"}}, &out, nil); err != nil || st != 0 || out.String() != "640\n950000\n" {
		t.Fatalf("cat: %v %d %q", err, st, out.String())
	}

	// Cancel a long command: prompt, and the agent goes on.
	cctx, ccancel := context.WithTimeout(ctx, time.Second)
	start = time.Now()
	_, err = c.Exec(cctx, protocol.ExecRequest{Argv: []string{"/bin/sleep", "100"}, Chroot: "/mnt"}, nil, nil)
	ccancel()
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("cancelled exec: %v after %v", err, time.Since(start))
	}
	t.Logf("cancelled exec returned after %v", time.Since(start).Round(time.Millisecond))
	out.Reset()
	if st, err := c.Exec(ctx, protocol.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo still here"}, Chroot: "/mnt"}, &out, nil); err != nil || st != 0 || out.String() != "still here\n" {
		t.Fatalf("exec after cancel: %v %d %q", err, st, out.String())
	}

	if err := c.Unmount(ctx, "/mnt"); err != nil {
		t.Fatal(err)
	}
	if err := c.Poweroff(ctx); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	select {
	case <-v.exited:
		t.Logf("QEMU exited %v after poweroff", time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU still running 10 s after poweroff")
	}
	con := v.console.String()
	for _, want := range []string{"[agent] starting", "[agent] serving on /dev/vport", "[agent] exec", "[agent] powering off"} {
		if !strings.Contains(con, want) {
			t.Errorf("console lacks %q:\n%s", want, con)
		}
	}
	if strings.Contains(con, "FATAL") {
		t.Errorf("agent reported a fatal error:\n%s", con)
	}
	// The filesystem was cleanly unmounted.
	if out, err := exec.Command("e2fsck", "-fn", v.image).CombinedOutput(); err != nil {
		t.Errorf("e2fsck after poweroff: %v\n%s", err, out)
	}
}

// TestQEMUKilled: QEMU dying mid-Exec fails the call promptly and clearly.
func TestQEMUKilled(t *testing.T) {
	t.Parallel()
	v := bootVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := v.dial(t, ctx)
	if err := c.Mount(ctx, protocol.MountRequest{Source: "/dev/vda", Target: "/mnt", FSType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, protocol.ExecRequest{Argv: []string{"/bin/sleep", "100"}, Chroot: "/mnt"}, io.Discard, io.Discard)
		errc <- err
	}()
	time.Sleep(500 * time.Millisecond)
	v.cmd.Process.Kill()
	killed := time.Now()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "connection lost") {
			t.Fatalf("exec after QEMU died: %v", err)
		}
		t.Logf("exec failed %v after the kill: %v", time.Since(killed).Round(time.Millisecond), err)
	case <-time.After(2 * time.Second):
		t.Fatal("exec still running 2 s after QEMU was killed")
	}
}
