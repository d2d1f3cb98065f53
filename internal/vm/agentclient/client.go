// Package agentclient is the host side of the installer VM's agent
// protocol: it dials QEMU's chardev socket and calls the agent's operations.
package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// cancelGrace is how long a cancelled call waits for the agent to confirm
// before returning anyway; the agent kills an Exec at once, so this only
// runs out when the guest is stuck.
const cancelGrace = 3 * time.Second

// helloInterval is how often Hello is resent while the guest has not
// opened its port yet: what was sent before may be lost, and every wait
// here is the installer's boot time. The agent answers each one it reads.
const helloInterval = 50 * time.Millisecond

// RemoteError is a failure the agent reported for a request.
type RemoteError struct {
	Op      string
	Message string
}

func (e *RemoteError) Error() string { return "guest agent: " + e.Op + ": " + e.Message }

// Client is the host side of the protocol. Its methods may be called from
// several goroutines but run one at a time.
type Client struct {
	conn   io.ReadWriteCloser
	fw     *protocol.FrameWriter
	frames chan protocol.Frame
	closed chan struct{}
	once   sync.Once

	readErr error // valid once frames is closed

	mu     sync.Mutex // one request at a time
	nextID uint32
}

// Dial connects to the UNIX socket of QEMU's agent chardev, retrying while
// the socket does not exist yet or refuses (QEMU still starting) until ctx
// ends. Being connected says nothing about the guest: call Hello.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return NewClient(conn), nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("guest agent: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest agent: connecting to %s: %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// NewClient speaks the protocol over conn, which it owns from now on.
func NewClient(conn io.ReadWriteCloser) *Client {
	c := &Client{conn: conn, fw: protocol.NewFrameWriter(conn), frames: make(chan protocol.Frame), closed: make(chan struct{}),
		// Ids differ from a previous connection's, whose late frames the
		// agent might still deliver.
		nextID: uint32(time.Now().UnixNano())}
	go c.readLoop()
	return c
}

func (c *Client) readLoop() {
	fr := protocol.NewFrameReader(c.conn, false)
	for {
		f, err := fr.Read()
		if err != nil {
			c.readErr = err
			close(c.frames)
			return
		}
		select {
		case c.frames <- f:
		case <-c.closed:
			c.readErr = net.ErrClosed
			close(c.frames)
			return
		}
	}
}

// Close closes the connection; the agent treats it as a disconnect, kills
// a running Exec and waits for the next connection.
func (c *Client) Close() error {
	var err error
	c.once.Do(func() {
		close(c.closed)
		err = c.conn.Close()
	})
	return err
}

func (c *Client) lost(op string) error {
	err := c.readErr
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("guest agent: %s: connection lost (QEMU exited or closed the agent channel): %w", op, err)
	}
	return fmt.Errorf("guest agent: %s: connection lost: %w", op, err)
}

func (c *Client) newID() uint32 {
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	return c.nextID
}

func (c *Client) cancel(id uint32) {
	// In the background: a data write may hold the writer.
	go c.fw.Write(protocol.FrameCancel, id, nil)
}

// call sends req and waits for its response. input, when set, streams the
// request's data and must return early once stop is closed; onFrame gets
// the streamed frames. A local failure (input or onFrame) cancels the
// request and is what call returns.
func (c *Client) call(ctx context.Context, req *protocol.Request, input func(id uint32, stop <-chan struct{}) error, onFrame func(protocol.Frame) error) (*protocol.Response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("guest agent: %s: %w", req.Op, err)
	}
	id := c.newID()
	if err := c.fw.WriteJSON(protocol.FrameRequest, id, req); err != nil {
		return nil, fmt.Errorf("guest agent: %s: sending: %w", req.Op, err)
	}
	stop := make(chan struct{})
	defer close(stop)
	inErr := make(chan error, 1)
	if input != nil {
		go func() { inErr <- input(id, stop) }()
	}

	var localErr error
	var grace <-chan time.Time
	done := ctx.Done()
	abort := func(err error) {
		if localErr == nil {
			localErr = err
			c.cancel(id)
			grace = time.After(cancelGrace)
		}
	}
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				return nil, c.lost(req.Op)
			}
			if f.ID != id {
				continue // a late frame of an abandoned request or a repeated Hello
			}
			if f.Type != protocol.FrameResponse {
				if onFrame != nil && localErr == nil {
					if err := onFrame(f); err != nil {
						abort(err)
					}
				}
				continue
			}
			resp, err := decodeResponse(req.Op, f.Payload)
			if localErr != nil {
				return nil, localErr
			}
			if err != nil {
				return nil, err
			}
			return resp, nil
		case err := <-inErr:
			if err != nil {
				abort(fmt.Errorf("guest agent: %s: %w", req.Op, err))
			}
		case <-done:
			done = nil
			abort(fmt.Errorf("guest agent: %s: %w", req.Op, ctx.Err()))
		case <-grace:
			// The agent may be stuck (a command that never reads its
			// stdin holds its frame loop), and a write of ours may hold
			// the writer: closing ends both, and later calls fail at once
			// instead of blocking in a write.
			c.Close()
			return nil, fmt.Errorf("%w (the agent did not confirm the cancel within %v; connection closed)", localErr, cancelGrace)
		}
	}
}

// Hello waits for the agent to answer and returns what it reports. It is
// the readiness probe: the request is resent every 250 ms because the
// guest drops whatever arrives before it opened its port.
func (c *Client) Hello(ctx context.Context) (*protocol.HelloInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// QEMU reads the chardev only once the guest has opened its port: until
	// then the socket fills, and a write blocks whatever ctx says. Ending
	// ctx closes the connection, which ends the write (callers close the
	// client after a failed Hello anyway).
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	sent := map[uint32]bool{}
	tick := time.NewTicker(helloInterval)
	defer tick.Stop()
	for {
		id := c.newID()
		sent[id] = true
		if err := c.fw.WriteJSON(protocol.FrameRequest, id, &protocol.Request{Op: protocol.OpHello}); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("guest agent: no hello from the agent: %w", ctx.Err())
			}
			return nil, fmt.Errorf("guest agent: hello: sending: %w", err)
		}
	wait:
		for {
			select {
			case f, ok := <-c.frames:
				if !ok {
					return nil, c.lost("hello")
				}
				if f.Type != protocol.FrameResponse || !sent[f.ID] {
					continue
				}
				resp, err := decodeResponse(protocol.OpHello, f.Payload)
				if err != nil {
					return nil, err
				}
				if !stop() { // ctx ended meanwhile and closed the connection
					return nil, fmt.Errorf("guest agent: no hello from the agent: %w", ctx.Err())
				}
				return resp.Hello, nil
			case <-tick.C:
				break wait
			case <-ctx.Done():
				return nil, fmt.Errorf("guest agent: no hello from the agent: %w", ctx.Err())
			}
		}
	}
}

func (c *Client) simple(ctx context.Context, req *protocol.Request) error {
	_, err := c.call(ctx, req, nil, nil)
	return err
}

// Mount mounts r.Source on r.Target in the guest.
func (c *Client) Mount(ctx context.Context, r protocol.MountRequest) error {
	return c.simple(ctx, &protocol.Request{Op: protocol.OpMount, Mount: &r})
}

// BindSystem prepares r.Root for chrooted commands (see protocol.BindSystemRequest).
func (c *Client) BindSystem(ctx context.Context, r protocol.BindSystemRequest) error {
	return c.simple(ctx, &protocol.Request{Op: protocol.OpBindSystem, Bind: &r})
}

// Unmount unmounts everything at or below target in the guest.
func (c *Client) Unmount(ctx context.Context, target string) error {
	return c.simple(ctx, &protocol.Request{Op: protocol.OpUnmount, Path: target})
}

// Remove removes path inside root in the guest (see protocol.UploadRequest
// for root), not following its last component, with everything below it
// if recursive.
func (c *Client) Remove(ctx context.Context, root, path string, recursive bool) error {
	return c.simple(ctx, &protocol.Request{Op: protocol.OpRemove, Root: root, Path: path, Recursive: recursive})
}

// Sync flushes the guest's filesystems.
func (c *Client) Sync(ctx context.Context) error {
	return c.simple(ctx, &protocol.Request{Op: protocol.OpSync})
}

// Poweroff has the agent kill leftover processes, unmount what it mounted
// and sync; once it answers, the VM powers off and QEMU exits.
func (c *Client) Poweroff(ctx context.Context) error {
	return c.simple(ctx, &protocol.Request{Op: protocol.OpPoweroff})
}

// Exec runs r in the guest, copying its output to stdout and stderr (nil
// discards), and returns its exit status (128+n when killed by signal n).
// A cancelled ctx kills the command's process group; a failure to write
// the output does too, and is returned.
func (c *Client) Exec(ctx context.Context, r protocol.ExecRequest, stdout, stderr io.Writer) (int, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	var input func(uint32, <-chan struct{}) error
	if r.Stdin != nil {
		r.HasStdin = true
		stdin := r.Stdin
		input = func(id uint32, stop <-chan struct{}) error {
			return c.stream(protocol.FrameStdin, id, stop, stdin, -1)
		}
	}
	resp, err := c.call(ctx, &protocol.Request{Op: protocol.OpExec, Exec: &r}, input, func(f protocol.Frame) error {
		var err error
		switch f.Type {
		case protocol.FrameStdout:
			_, err = stdout.Write(f.Payload)
		case protocol.FrameStderr:
			_, err = stderr.Write(f.Payload)
		}
		return err
	})
	if err != nil {
		return -1, err
	}
	if resp.Exec == nil {
		return -1, fmt.Errorf("guest agent: exec: response without a result")
	}
	return resp.Exec.ExitStatus, nil
}

// stream sends r as frames of type typ: exactly size bytes, or with size
// < 0 until EOF followed by an empty frame.
func (c *Client) stream(typ byte, id uint32, stop <-chan struct{}, r io.Reader, size int64) error {
	buf := make([]byte, protocol.ChunkSize)
	var sent int64
	for size < 0 || sent < size {
		select {
		case <-stop:
			return nil
		default:
		}
		want := int64(len(buf))
		if size >= 0 {
			want = min(want, size-sent)
		}
		n, err := io.ReadFull(r, buf[:want])
		if n > 0 {
			if werr := c.fw.Write(typ, id, buf[:n]); werr != nil {
				return werr
			}
			sent += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if size >= 0 && sent < size {
				return fmt.Errorf("source ended after %d of %d bytes", sent, size)
			}
			break
		}
		if err != nil {
			return err
		}
	}
	if size < 0 {
		return c.fw.Write(typ, id, nil)
	}
	return nil
}

// Upload writes size bytes from r to path inside root in the guest (root
// "": the agent's own "/"; see protocol.UploadRequest), atomically, with
// mode's permission bits (and setuid/setgid/sticky) and owner uid:gid.
func (c *Client) Upload(ctx context.Context, root, path string, mode fs.FileMode, uid, gid int, r io.Reader, size int64) error {
	req := &protocol.Request{Op: protocol.OpUpload, Upload: &protocol.UploadRequest{Root: root, Path: path, Mode: unixmode.Perm(mode), Uid: uid, Gid: gid, Size: size}}
	_, err := c.call(ctx, req, func(id uint32, stop <-chan struct{}) error {
		return c.stream(protocol.FrameData, id, stop, r, size)
	}, nil)
	return err
}

// Download copies the guest's regular file path inside root (following a
// symlink inside root, as cat does) to w and returns its mode, owner and
// size.
func (c *Client) Download(ctx context.Context, root, path string, w io.Writer) (protocol.FileInfo, error) {
	var got int64
	resp, err := c.call(ctx, &protocol.Request{Op: protocol.OpDownload, Root: root, Path: path}, nil, func(f protocol.Frame) error {
		if f.Type != protocol.FrameData {
			return nil
		}
		n, err := w.Write(f.Payload)
		got += int64(n)
		return err
	})
	if err != nil {
		return protocol.FileInfo{}, err
	}
	// The agent reports the size it sent: anything else is a stream that
	// lost or gained bytes.
	if got != resp.File.Size {
		return protocol.FileInfo{}, fmt.Errorf("guest agent: download: got %d bytes, the agent says it sent %d", got, resp.File.Size)
	}
	return *resp.File, nil
}
