package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// System performs the agent's operations. Linux is the real one; Serve
// only speaks the protocol.
type System interface {
	Hello() (protocol.HelloInfo, error)
	Mount(ctx context.Context, r *protocol.MountRequest) error
	BindSystem(ctx context.Context, r *protocol.BindSystemRequest) error
	// Exec runs r to completion; a cancelled ctx kills it. A non-nil
	// error means it could not run at all.
	Exec(ctx context.Context, r *protocol.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (protocol.ExecResult, error)
	// Upload reads exactly r.Size bytes from data into r.Path inside
	// r.Root. Download and Remove, too, resolve path inside root ("" is
	// the agent's "/"), as a command chrooted there would.
	Upload(ctx context.Context, r *protocol.UploadRequest, data io.Reader) error
	Download(ctx context.Context, root, path string, w io.Writer) (protocol.FileInfo, error)
	Remove(ctx context.Context, root, path string, recursive bool) error
	Unmount(ctx context.Context, target string) error
	Sync() error
	// Poweroff readies the disks for power loss: nothing of the guest may
	// be left mounted read-write or unsynced when it returns.
	Poweroff(ctx context.Context) error
}

// ErrPoweroff is returned by Serve once it has answered a poweroff request;
// the caller then powers the machine off.
var ErrPoweroff = errors.New("guest: poweroff requested")

// active is the request being served.
type active struct {
	id     uint32
	cancel context.CancelFunc
	in     chan []byte   // its 'D' or 'I' payloads
	done   chan struct{} // closed when its response is written
}

// Serve answers requests from rw until the stream ends (io.EOF), fails, or
// a poweroff is answered (ErrPoweroff). If rw is an io.Closer it is closed
// when the stream ends, so a request stuck writing to a departed host
// fails instead of blocking; the running request is cancelled and waited
// for before Serve returns.
func Serve(rw io.ReadWriter, sys System) error {
	fr := protocol.NewFrameReader(rw, true)
	fw := protocol.NewFrameWriter(rw)
	var cur *active
	finish := func() {
		if cur != nil {
			<-cur.done
			cur = nil
		}
	}
	for {
		f, err := fr.Read()
		if fr.Skipped > 0 {
			log.Printf("skipped %d bytes of garbage before a frame", fr.Skipped)
			fr.Skipped = 0
		}
		if err != nil {
			if cur != nil {
				cur.cancel()
			}
			if c, ok := rw.(io.Closer); ok {
				c.Close()
			}
			finish()
			return err
		}
		switch f.Type {
		case protocol.FrameRequest:
			// The host sends a new request only after the previous one
			// ended or was cancelled: one still running was abandoned, and
			// an upload or stdin would wait forever for its data. Cancel
			// it and let it wind down.
			if cur != nil {
				cur.cancel()
			}
			finish()
			req, err := decodeRequest(f.Payload)
			if err != nil {
				fw.WriteJSON(protocol.FrameResponse, f.ID, protocol.Response{Error: err.Error()})
				continue
			}
			if req.Op == protocol.OpPoweroff {
				log.Printf("poweroff: unmounting and syncing")
				err := sys.Poweroff(context.Background())
				if werr := fw.WriteJSON(protocol.FrameResponse, f.ID, errResponse(err)); werr != nil {
					return werr
				}
				if err == nil {
					return ErrPoweroff
				}
				continue
			}
			ctx, cancel := context.WithCancel(context.Background())
			cur = &active{id: f.ID, cancel: cancel, in: make(chan []byte), done: make(chan struct{})}
			go func(a *active) {
				defer close(a.done)
				defer cancel()
				start := time.Now()
				resp := handle(ctx, sys, fw, a, req)
				logResult(req, &resp, time.Since(start))
				if err := fw.WriteJSON(protocol.FrameResponse, a.id, resp); err != nil {
					log.Printf("request %d (%s): writing the response: %v", a.id, req.Op, err)
				}
			}(cur)
		case protocol.FrameCancel:
			if cur != nil && cur.id == f.ID {
				cur.cancel()
			}
		case protocol.FrameData, protocol.FrameStdin:
			if cur != nil && cur.id == f.ID {
				select {
				case cur.in <- f.Payload:
				case <-cur.done: // it ended early (an error); drop the rest
				}
			}
		}
	}
}

// logResult puts each request's outcome on the console, where the user
// follows the installation; Hello and Sync are too chatty to matter.
func logResult(req *protocol.Request, resp *protocol.Response, d time.Duration) {
	var what string
	switch req.Op {
	case protocol.OpHello, protocol.OpSync:
		if resp.Error == "" {
			return
		}
	case protocol.OpMount:
		if req.Mount != nil {
			what = fmt.Sprintf(" %s on %s", req.Mount.Source, req.Mount.Target)
		}
	case protocol.OpBindSystem:
		if req.Bind != nil {
			what = " " + req.Bind.Root
		}
	case protocol.OpExec:
		if req.Exec != nil {
			what = fmt.Sprintf(" %q", req.Exec.Argv)
			if req.Exec.Chroot != "" {
				what += " in " + req.Exec.Chroot
			}
		}
		if resp.Exec != nil {
			what += fmt.Sprintf(": exit status %d", resp.Exec.ExitStatus)
			if resp.Exec.Signal != "" {
				what += " (" + resp.Exec.Signal + ")"
			}
		}
	case protocol.OpUpload:
		if req.Upload != nil {
			what = fmt.Sprintf(" %s (%d bytes)", req.Upload.Path, req.Upload.Size)
			if req.Upload.Root != "" {
				what += " in " + req.Upload.Root
			}
		}
	default:
		what = " " + req.Path
		if req.Root != "" {
			what += " in " + req.Root
		}
	}
	if resp.Error != "" {
		log.Printf("%s%s: FAILED after %v: %s", req.Op, what, d.Round(time.Millisecond), resp.Error)
		return
	}
	log.Printf("%s%s (%v)", req.Op, what, d.Round(time.Millisecond))
}

func errResponse(err error) protocol.Response {
	if err != nil {
		return protocol.Response{Error: err.Error()}
	}
	return protocol.Response{}
}

// handle serves a request decodeRequest accepted.
func handle(ctx context.Context, sys System, fw *protocol.FrameWriter, a *active, req *protocol.Request) protocol.Response {
	switch req.Op {
	case protocol.OpHello:
		info, err := sys.Hello()
		if err != nil {
			return errResponse(err)
		}
		return protocol.Response{Hello: &info}
	case protocol.OpMount:
		return errResponse(sys.Mount(ctx, req.Mount))
	case protocol.OpBindSystem:
		return errResponse(sys.BindSystem(ctx, req.Bind))
	case protocol.OpExec:
		var stdin io.Reader
		if req.Exec.HasStdin {
			stdin = &inReader{ctx: ctx, ch: a.in, eofOnEmpty: true}
		}
		res, err := sys.Exec(ctx, req.Exec,
			stdin, protocol.NewChunkWriter(fw, protocol.FrameStdout, a.id), protocol.NewChunkWriter(fw, protocol.FrameStderr, a.id))
		if err != nil {
			return errResponse(err)
		}
		return protocol.Response{Exec: &res}
	case protocol.OpUpload:
		in := &inReader{ctx: ctx, ch: a.in}
		return errResponse(sys.Upload(ctx, req.Upload, io.LimitReader(in, req.Upload.Size)))
	case protocol.OpDownload:
		fi, err := sys.Download(ctx, req.Root, req.Path, protocol.NewChunkWriter(fw, protocol.FrameData, a.id))
		if err != nil {
			return errResponse(err)
		}
		return protocol.Response{File: &fi}
	case protocol.OpRemove:
		return errResponse(sys.Remove(ctx, req.Root, req.Path, req.Recursive))
	case protocol.OpUnmount:
		return errResponse(sys.Unmount(ctx, req.Path))
	case protocol.OpSync:
		return errResponse(sys.Sync())
	}
	return protocol.Response{Error: fmt.Sprintf("unknown op %q", req.Op)}
}

// inReader reads the payloads Serve forwards for the current request.
type inReader struct {
	ctx        context.Context
	ch         <-chan []byte
	buf        []byte
	eofOnEmpty bool // stdin: an empty frame ends the input
	eof        bool
}

func (r *inReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		select {
		case b := <-r.ch:
			if len(b) == 0 && r.eofOnEmpty {
				r.eof = true
			}
			r.buf = b
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
