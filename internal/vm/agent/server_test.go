package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentclient"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount, chroot)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (busybox-static)")
	}
}

// pair runs Serve on one end of a pipe with the real Linux system and
// returns a client on the other end and Serve's result.
func pair(t *testing.T) (*agentclient.Client, *Linux, <-chan error) {
	t.Helper()
	a, b := net.Pipe()
	sys := &Linux{DeviceWait: 200 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- Serve(b, sys) }()
	c := agentclient.NewClient(a)
	t.Cleanup(func() { c.Close() })
	return c, sys, done
}

// chroot mounts a tmpfs through the agent and fills it with busybox: bin/sh
// relative, bin/cat absolute (resolvable only inside the chroot).
func chroot(t *testing.T, ctx context.Context, c *agentclient.Client) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	t.Cleanup(func() { unmountAllBelow(root) })
	if err := c.Mount(ctx, protocol.MountRequest{Source: "tmpfs", Target: root, FSType: "tmpfs", Options: "nodev,size=64m,mode=755"}); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Upload(ctx, "", filepath.Join(root, "bin/busybox"), 0o755, 0, 0, bytes.NewReader(bb), int64(len(bb))); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"sh": "busybox", "cat": "/bin/busybox", "sleep": "busybox"} {
		if err := os.Symlink(target, filepath.Join(root, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// unmountAllBelow is the test's own safety net, independent of the agent.
func unmountAllBelow(root string) {
	mps, _ := mountPoints()
	for i := len(mps) - 1; i >= 0; i-- {
		if under(mps[i], root) {
			unix.Unmount(mps[i], unix.MNT_DETACH)
		}
	}
}

func exec1(t *testing.T, ctx context.Context, c *agentclient.Client, r protocol.ExecRequest) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	start := time.Now()
	st, err := c.Exec(ctx, r, &out, &errb)
	t.Logf("exec %.40q: %v", r.Argv, time.Since(start))
	if err != nil {
		t.Fatalf("exec %q: %v", r.Argv, err)
	}
	return out.String(), errb.String(), st
}

func TestServe(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, sys, done := pair(t)

	info, err := c.Hello(ctx)
	if err != nil || info.Version != protocol.Version || info.Kernel == "" || info.Uptime <= 0 {
		t.Fatalf("hello: %+v %v", info, err)
	}
	root := chroot(t, ctx, c)
	if err := c.BindSystem(ctx, protocol.BindSystemRequest{Root: root, Tmp: true}); err != nil {
		t.Fatal(err)
	}

	out, errs, st := exec1(t, ctx, c, protocol.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo hi; echo err >&2; exit 3"}, Chroot: root})
	if out != "hi\n" || errs != "err\n" || st != 3 {
		t.Errorf("exec: stdout %q stderr %q status %d", out, errs, st)
	}
	// Bare name looked up inside the chroot through an absolute symlink;
	// the bound /proc and the tmpfs /tmp are there.
	out, errs, st = exec1(t, ctx, c, protocol.ExecRequest{Argv: []string{"cat", "/proc/self/mounts"}, Chroot: root, Env: []string{"PATH=/bin"}})
	if st != 0 || !strings.Contains(out, " /tmp tmpfs ") || !strings.Contains(out, " /run tmpfs ") {
		t.Errorf("cat mounts: status %d stderr %q\n%s", st, errs, out)
	}
	// stdin, Dir and Env
	out, _, st = exec1(t, ctx, c, protocol.ExecRequest{Argv: []string{"sh", "-c", "pwd; echo $FOO; cat"}, Chroot: root, Dir: "/tmp",
		Env: []string{"PATH=/bin", "FOO=bar"}, Stdin: strings.NewReader(strings.Repeat("z", 200000))})
	if st != 0 || out != "/tmp\nbar\n"+strings.Repeat("z", 200000) {
		t.Errorf("stdin: status %d, %d bytes of output", st, len(out))
	}
	// Large output keeps its bytes and order.
	out, _, _ = exec1(t, ctx, c, protocol.ExecRequest{Argv: []string{"sh", "-c", "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done"}, Chroot: root})
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 20000 || lines[19999] != "line19999" {
		t.Errorf("big output: %d lines", len(lines))
	}
	// Killed by a signal.
	if _, _, st := exec1(t, ctx, c, protocol.ExecRequest{Argv: []string{"/bin/sh", "-c", "kill -TERM $$"}, Chroot: root}); st != 128+int(syscall.SIGTERM) {
		t.Errorf("signalled: status %d", st)
	}
	// Errors come back as agentclient.RemoteError and leave the agent usable.
	var re *agentclient.RemoteError
	if _, err := c.Exec(ctx, protocol.ExecRequest{Argv: []string{"nosuch"}, Chroot: root}, nil, nil); !errors.As(err, &re) || !strings.Contains(err.Error(), "not found in PATH") {
		t.Errorf("missing command: %v", err)
	}
	if err := c.Mount(ctx, protocol.MountRequest{Source: "/dev/nosuch", Target: root + "/x", FSType: "ext4"}); !errors.As(err, &re) {
		t.Errorf("bad mount: %v", err)
	}

	// Upload keeps mode and owner (setgid too), atomically.
	data := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	p := filepath.Join(root, "etc/new/file")
	if err := c.Upload(ctx, "", p, 0o640|os.ModeSetgid, 1000, 100, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	fi, err := c.Download(ctx, "", p, &got)
	if err != nil || !bytes.Equal(got.Bytes(), data) || fi != (protocol.FileInfo{Mode: 0o2640, Uid: 1000, Gid: 100, Size: int64(len(data))}) {
		t.Errorf("download: %+v %v (%d bytes)", fi, err, got.Len())
	}
	// A source shorter than announced fails and leaves nothing behind.
	if err := c.Upload(ctx, "", filepath.Join(root, "etc/new/short"), 0o644, 0, 0, strings.NewReader("abc"), 10); err == nil {
		t.Error("short upload accepted")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "etc/new")); len(ents) != 1 {
		t.Errorf("leftovers after a failed upload: %v", ents)
	}
	// A cancelled upload stops at once and leaves nothing behind either.
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(make([]byte, 100000))
	uctx, ucancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, ucancel)
	if err := c.Upload(uctx, "", filepath.Join(root, "etc/new/stalled"), 0o644, 0, 0, pr, 1<<20); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled upload: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "etc/new")); len(ents) != 1 {
		t.Errorf("leftovers after a cancelled upload: %v", ents)
	}
	if _, err := c.Download(ctx, "", root+"/etc", io.Discard); err == nil {
		t.Error("downloading a directory accepted")
	}
	if err := c.Remove(ctx, "", p, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("remove: %v", err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	// Cancelling a long command returns at once and kills it.
	pidFile := filepath.Join(root, "tmp/pid")
	cctx, ccancel := context.WithCancel(ctx)
	time.AfterFunc(300*time.Millisecond, ccancel)
	start := time.Now()
	_, err = c.Exec(cctx, protocol.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo $$ > /tmp/pid; exec sleep 100"}, Chroot: root}, nil, nil)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
		t.Errorf("cancelled exec: %v after %v", err, time.Since(start))
	}
	assertDead(t, pidFile)
	if out, _, st := exec1(t, ctx, c, protocol.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo again"}, Chroot: root}); out != "again\n" || st != 0 {
		t.Errorf("exec after cancel: %q %d", out, st)
	}

	if err := c.Unmount(ctx, root+"/sys"); err != nil {
		t.Fatal(err)
	}
	if err := c.Poweroff(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrPoweroff) {
		t.Fatalf("Serve returned %v, want ErrPoweroff", err)
	}
	mps, _ := mountPoints()
	for _, mp := range mps {
		if under(mp, root) {
			t.Errorf("still mounted after poweroff: %s", mp)
		}
	}
	if len(sys.mounts) != 0 {
		t.Errorf("agent still tracks %v", sys.mounts)
	}
}

func assertDead(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	for i := 0; i < 100; i++ {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("pid %d still alive", pid)
}

// TestDisconnectKills: a host that goes away mid-Exec ends Serve and the
// command.
func TestDisconnectKills(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, done := pair(t)
	root := chroot(t, ctx, c)
	pidFile := filepath.Join(root, "pid")
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, protocol.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo $$ > /pid; echo started; exec sleep 100"}, Chroot: root}, nil, nil)
		errc <- err
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(pidFile); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("command did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Close()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "connection lost") {
			t.Errorf("exec after close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Exec did not return after Close")
	}
	select {
	case err := <-done:
		if err == nil || errors.Is(err, ErrPoweroff) {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the host left")
	}
	assertDead(t, pidFile)
}

// TestHelloRetry: Hellos sent before the port opens are lost, a half-lost
// one leaves garbage, and the stale answers to the repeated Hellos do not
// confuse the next request.
func TestHelloRetry(t *testing.T) {
	a, b := net.Pipe()
	// Like virtio-serial before the guest opens its port, drop what the
	// host sends: a whole Hello and part of the next, so the agent must
	// resynchronise.
	go func() {
		buf := make([]byte, 1)
		for range protocol.HeaderLen + len(`{"op":"hello"}`) + 5 {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
		Serve(b, &Linux{})
	}()
	c := agentclient.NewClient(a)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	info, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hello after %v: %+v", time.Since(start), info)
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestHelloTimeout(t *testing.T) {
	a, b := net.Pipe()
	go io.Copy(io.Discard, b)
	c := agentclient.NewClient(a)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	if _, err := c.Hello(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no hello") {
		t.Fatalf("got %v", err)
	}
}

func TestIsAgent(t *testing.T) {
	if IsAgent() {
		t.Fatal("the test binary thinks it is the agent")
	}
}
