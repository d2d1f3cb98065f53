package nixos

import (
	"context"
	"fmt"
	"io"
	"net"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agent"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/qemu"
)

// fakeQEMU starts no QEMU: its VM serves guest on the agent socket, the
// real protocol over a real socket, so the install steps run as they do
// against the installer VM. With no guest the VM dies at once.
type fakeQEMU struct {
	qemu.Driver // not called by the steps
	startErr    error
	guest       *fakeGuest
	started     []qemu.VMConfig
	vm          *fakeVM
}

func (q *fakeQEMU) Start(ctx context.Context, c qemu.VMConfig) (qemu.VM, error) {
	q.started = append(q.started, c)
	if q.startErr != nil {
		return nil, q.startErr
	}
	vm := &fakeVM{done: make(chan struct{})}
	q.vm = vm
	context.AfterFunc(ctx, vm.Kill) // as QEMU dies with its context
	if q.guest == nil {
		vm.exit()
		return vm, nil
	}
	ln, err := net.Listen("unix", c.AgentSocket)
	if err != nil {
		return nil, err
	}
	go func() {
		<-vm.done
		ln.Close()
	}()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if agent.Serve(conn, q.guest) == agent.ErrPoweroff {
			vm.exit()
		}
	}()
	return vm, nil
}

// fakeVM is the VM of fakeQEMU: it runs until the guest powers off or it
// is killed.
type fakeVM struct {
	qemu.VM // not called by the steps
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	killed  bool
}

func (v *fakeVM) exit() { v.once.Do(func() { close(v.done) }) }

func (v *fakeVM) Kill() {
	v.mu.Lock()
	v.killed = true
	v.mu.Unlock()
	v.exit()
}

func (v *fakeVM) wasKilled() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.killed
}

func (v *fakeVM) Wait() error                { <-v.done; return nil }
func (v *fakeVM) Done() <-chan struct{}      { return v.done }
func (v *fakeVM) ConsoleTail(n int) []string { return []string{"fake console: the last line"} }

// fakeGuest is the installed system as the agent sees it: it records the
// operations, holds files, and fails an operation named in fail.
type fakeGuest struct {
	mu     sync.Mutex
	ops    []string          // "mount /dev/vda1 /mnt ext4", "exec /nix/.../activate", ...
	files  map[string]string // guest path -> content
	fail   map[string]error  // by operation: "mount", "exec", "unmount", ...
	status map[string]int    // exit status by the command's base name
	execs  []protocol.ExecRequest
	binds  []protocol.BindSystemRequest
}

func newFakeGuest() *fakeGuest {
	return &fakeGuest{files: map[string]string{}, fail: map[string]error{}, status: map[string]int{}}
}

// do records an operation and returns its configured failure.
func (g *fakeGuest) do(op string, args ...string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ops = append(g.ops, strings.Join(append([]string{op}, args...), " "))
	return g.fail[op]
}

func (g *fakeGuest) did() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.ops...)
}

func (g *fakeGuest) file(p string) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, ok := g.files[p]
	return s, ok
}

func notFound(p string) error { return fmt.Errorf("open %s: no such file or directory", p) }

func (g *fakeGuest) Hello() (protocol.HelloInfo, error) {
	return protocol.HelloInfo{Version: "fake", Kernel: "6.1.0", Uptime: 0.5}, nil
}

func (g *fakeGuest) Mount(_ context.Context, r *protocol.MountRequest) error {
	return g.do("mount", r.Source, r.Target, r.FSType)
}

func (g *fakeGuest) BindSystem(_ context.Context, r *protocol.BindSystemRequest) error {
	g.mu.Lock()
	g.binds = append(g.binds, *r)
	g.mu.Unlock()
	return g.do("bind", r.Root)
}

func (g *fakeGuest) bound() []protocol.BindSystemRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.binds)
}

// exec is the recorded request of the command whose base name is base.
func (g *fakeGuest) exec(base string) (protocol.ExecRequest, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range g.execs {
		if path.Base(r.Argv[0]) == base {
			return r, true
		}
	}
	return protocol.ExecRequest{}, false
}

func (g *fakeGuest) Exec(_ context.Context, r *protocol.ExecRequest, _ io.Reader, stdout, _ io.Writer) (protocol.ExecResult, error) {
	g.mu.Lock()
	g.execs = append(g.execs, *r)
	g.mu.Unlock()
	if err := g.do("exec", r.Argv...); err != nil {
		return protocol.ExecResult{}, err
	}
	fmt.Fprintf(stdout, "ran %s\n", path.Base(r.Argv[0]))
	g.mu.Lock()
	defer g.mu.Unlock()
	return protocol.ExecResult{ExitStatus: g.status[path.Base(r.Argv[0])]}, nil
}

func (g *fakeGuest) Upload(_ context.Context, r *protocol.UploadRequest, data io.Reader) error {
	b, err := io.ReadAll(data)
	if err == nil {
		err = g.do("upload", path.Join(r.Root, r.Path))
	}
	if err == nil {
		g.mu.Lock()
		g.files[path.Join(r.Root, r.Path)] = string(b)
		g.mu.Unlock()
	}
	return err
}

// Download and Remove key files by root and path joined: this fake has no
// symlinks to resolve.
func (g *fakeGuest) Download(_ context.Context, root, p string, w io.Writer) (protocol.FileInfo, error) {
	p = path.Join(root, p)
	s, ok := g.file(p)
	if !ok {
		return protocol.FileInfo{}, notFound(p)
	}
	_, err := io.WriteString(w, s)
	return protocol.FileInfo{Mode: 0o640, Size: int64(len(s))}, err
}

func (g *fakeGuest) Remove(_ context.Context, root, p string, _ bool) error {
	p = path.Join(root, p)
	if _, ok := g.file(p); !ok {
		return notFound(p)
	}
	if err := g.do("remove", p); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.files, p)
	return nil
}

func (g *fakeGuest) Unmount(_ context.Context, target string) error { return g.do("unmount", target) }
func (g *fakeGuest) Sync() error                                    { return g.do("sync") }
func (g *fakeGuest) Poweroff(context.Context) error                 { return g.do("poweroff") }

var _ agent.System = (*fakeGuest)(nil)
