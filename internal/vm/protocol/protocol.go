// Package protocol is the wire format between the host and the installer
// VM's agent: framing, requests and responses, shared by package agent (the
// guest side) and package agentclient (the host side).
//
// Both directions carry frames on one byte stream:
//
//	offset 0  2  magic "NX"
//	       2  1  type
//	       3  1  reserved, 0
//	       4  4  request id, big endian
//	       8  4  payload length n, big endian, at most MaxPayload
//	      12  n  payload
//
// Frame types:
//
//	'Q' host→agent  request: JSON object, "op" and the op's fields
//	'R' agent→host  response: JSON; ends the request ("error" set on failure)
//	'D' both        file data: Upload (host→agent, exactly Size bytes in total)
//	                and Download (agent→host, until the response)
//	'I' host→agent  Exec stdin; an empty 'I' frame is end of input
//	'O' agent→host  Exec stdout
//	'E' agent→host  Exec stderr
//	'C' host→agent  cancel the request with this id: kills a running Exec's
//	                process group, abandons an Upload (nothing is renamed)
//
// The exchange is strictly one request at a time: the host sends 'Q' (and
// for Upload the data, for Exec the stdin), the agent answers with any
// number of streamed frames and exactly one 'R'. Every frame carries the
// id of its request; the host drops frames with any other id. That makes
// three things safe: retrying Hello (several Hellos may all be answered),
// abandoning a request after a cancel without waiting for its end, and a
// reconnect after the host went away mid-request.
//
// Readiness: QEMU's chardev socket (server=on,wait=off) accepts the host
// before the guest has opened its port, and the guest's virtio_console
// driver discards whatever arrives while the port is closed. The client's
// Hello (agentclient.Client.Hello) therefore resends Hello, with a fresh
// id, until one is answered. The agent resynchronises on the magic if a
// frame was cut by such a drop.
//
// When the host disconnects (the agent reads EOF), a running Exec is killed,
// the port is closed and reopened, and the agent waits for the next host.
//
// Ops ("op" value: request fields → response fields, see Request and
// Response):
//
//	hello:       → hello
//	mount:       mount
//	bind_system: bind
//	exec:        exec (+ 'I' frames when exec.stdin) → 'O'/'E' frames, exec
//	upload:      upload + 'D' frames
//	download:    root, path → 'D' frames, file
//	remove:      root, path, recursive
//	unmount:     path (everything mounted at or below it, deepest first)
//	sync
//	poweroff:    the agent kills leftover processes, unmounts what it
//	             mounted, syncs, answers, then powers the VM off
package protocol

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// PortName is the virtio-serial port the agent serves on.
const PortName = "org.packer-plugin-nixos.agent"

// Version is the protocol and agent version reported by Hello. 2: upload,
// download and remove resolve their path inside a root (Root).
const Version = "2"

// MaxPayload bounds one frame; data is streamed in chunks of at most this.
const MaxPayload = 1 << 20

// ChunkSize is what the senders put in one data frame: small enough to
// keep stdout interleaving fine-grained, large enough to be cheap.
const ChunkSize = 64 << 10

const HeaderLen = 12

// Frame types.
const (
	FrameRequest  byte = 'Q'
	FrameResponse byte = 'R'
	FrameData     byte = 'D'
	FrameStdin    byte = 'I'
	FrameStdout   byte = 'O'
	FrameStderr   byte = 'E'
	FrameCancel   byte = 'C'
)

var magic = [2]byte{'N', 'X'}

// Frame is one frame: its type, the id of its request, and the payload.
type Frame struct {
	Type    byte
	ID      uint32
	Payload []byte
}

func validType(t byte) bool {
	switch t {
	case FrameRequest, FrameResponse, FrameData, FrameStdin, FrameStdout, FrameStderr, FrameCancel:
		return true
	}
	return false
}

// ErrFraming is returned by a strict reader on a malformed header.
var ErrFraming = errors.New("guest: malformed frame")

// FrameReader reads frames. With resync it skips bytes until a plausible
// header instead of failing, and counts what it skipped.
type FrameReader struct {
	r       *bufio.Reader
	resync  bool
	Skipped int // bytes skipped while resynchronising
}

// NewFrameReader reads frames from r; with resync it skips garbage.
func NewFrameReader(r io.Reader, resync bool) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10), resync: resync}
}

// Read returns the next frame.
func (fr *FrameReader) Read() (Frame, error) {
	for {
		h, err := fr.r.Peek(HeaderLen)
		if err != nil {
			if len(h) > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
		n := binary.BigEndian.Uint32(h[8:])
		if h[0] != magic[0] || h[1] != magic[1] || !validType(h[2]) || h[3] != 0 || n > MaxPayload {
			if !fr.resync {
				return Frame{}, fmt.Errorf("%w: header % x", ErrFraming, h)
			}
			fr.r.Discard(1)
			fr.Skipped++
			continue
		}
		f := Frame{Type: h[2], ID: binary.BigEndian.Uint32(h[4:]), Payload: make([]byte, n)}
		fr.r.Discard(HeaderLen)
		if _, err := io.ReadFull(fr.r, f.Payload); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
		return f, nil
	}
}

// FrameWriter serialises whole frames from several goroutines.
type FrameWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewFrameWriter writes frames to w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// Write sends one frame in one Write call.
func (fw *FrameWriter) Write(typ byte, id uint32, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("guest: frame payload of %d bytes exceeds %d", len(payload), MaxPayload)
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	// One Write per frame so a stream socket never interleaves halves.
	b := append(fw.buf[:0], magic[0], magic[1], typ, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[4:], id)
	binary.BigEndian.PutUint32(b[8:], uint32(len(payload)))
	b = append(b, payload...)
	fw.buf = b[:0]
	if cap(fw.buf) > 2*ChunkSize+HeaderLen {
		fw.buf = nil // don't pin a rare large frame
	}
	_, err := fw.w.Write(b)
	return err
}

// WriteJSON sends v, marshalled, as one frame.
func (fw *FrameWriter) WriteJSON(typ byte, id uint32, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return fw.Write(typ, id, b)
}

// ChunkWriter turns writes into frames of one type, for streamed output.
type ChunkWriter struct {
	fw  *FrameWriter
	typ byte
	id  uint32
}

// NewChunkWriter frames what is written to it as typ frames of request id.
func NewChunkWriter(fw *FrameWriter, typ byte, id uint32) ChunkWriter {
	return ChunkWriter{fw: fw, typ: typ, id: id}
}

func (c ChunkWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), ChunkSize)
		if err := c.fw.Write(c.typ, c.id, p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// Request is the JSON of a 'Q' frame: Op selects which other fields count.
type Request struct {
	Op     string             `json:"op"`
	Mount  *MountRequest      `json:"mount,omitempty"`
	Bind   *BindSystemRequest `json:"bind,omitempty"`
	Exec   *ExecRequest       `json:"exec,omitempty"`
	Upload *UploadRequest     `json:"upload,omitempty"`
	// Path is the file of download and remove, the target of unmount.
	Path string `json:"path,omitempty"`
	// Root, for download and remove, is the tree Path lies in (see
	// UploadRequest.Root).
	Root      string `json:"root,omitempty"`
	Recursive bool   `json:"recursive,omitempty"` // remove
}

// Op names.
const (
	OpHello      = "hello"
	OpMount      = "mount"
	OpBindSystem = "bind_system"
	OpExec       = "exec"
	OpUpload     = "upload"
	OpDownload   = "download"
	OpRemove     = "remove"
	OpUnmount    = "unmount"
	OpSync       = "sync"
	OpPoweroff   = "poweroff"
)

// MountRequest mounts Source (a path in the agent's namespace, usually a
// device such as /dev/vda2) on Target, creating Target. Options are
// mount(8)-style: the flag words (ro, nosuid, bind…) become flags and
// the rest is passed to the filesystem.
type MountRequest struct {
	Source  string `json:"source,omitempty"`
	Target  string `json:"target,omitempty"`
	FSType  string `json:"fstype,omitempty"`
	Options string `json:"options,omitempty"`
}

// BindSystemRequest prepares Root for chrooted commands as nixos-enter
// does: /dev and /sys recursively bound, a fresh proc, a tmpfs on /run;
// a tmpfs on /tmp when Tmp; efivarfs at sys/firmware/efi/efivars when
// EFIVars and the VM has UEFI. With BlockLinks the agent also creates the
// /dev/block/MAJ:MIN links udev would, for every block device (bootctl
// finds the ESP's disk through them; make-disk-image.nix makes one by
// hand), in the devtmpfs Root's /dev is bound to.
type BindSystemRequest struct {
	Root       string `json:"root,omitempty"`
	Tmp        bool   `json:"tmp,omitempty"`
	EFIVars    bool   `json:"efivars,omitempty"`
	BlockLinks bool   `json:"block_links,omitempty"`
}

// ExecRequest runs Argv. With Chroot, the command runs chrooted there, Dir
// is inside it, and a bare Argv[0] is looked up in Env's PATH inside the
// chroot. Env replaces the environment entirely (nil: a minimal PATH).
// Stdin, when set on the host, is streamed to the command; otherwise it
// reads /dev/null. A Read on Stdin that blocks forever keeps its goroutine
// after Exec returns, as with os/exec.
type ExecRequest struct {
	Argv   []string  `json:"argv,omitempty"`
	Env    []string  `json:"env,omitempty"`
	Dir    string    `json:"dir,omitempty"`
	Chroot string    `json:"chroot,omitempty"`
	Stdin  io.Reader `json:"-"`
	// HasStdin is set by the client when Stdin is given.
	HasStdin bool `json:"stdin,omitempty"`
}

// UploadRequest writes Size bytes to Path atomically (a temporary file in
// the same directory, renamed over Path), with Mode (permission bits) and
// ownership Uid:Gid. Missing parent directories are created as mkdir -p
// would.
//
// Root, when set, is an absolute path in the agent's namespace and Path a
// path inside it, resolved as a command chrooted into Root resolves it:
// absolute symlinks and ".." stay inside Root (openat2 RESOLVE_IN_ROOT).
// Root "" is the agent's own "/". The last component of Path is never
// followed: an upload replaces a symlink there, a remove removes it; a
// download follows it, as cat does.
type UploadRequest struct {
	Root string `json:"root,omitempty"`
	Path string `json:"path"`
	Mode uint32 `json:"mode"`
	Uid  int    `json:"uid"`
	Gid  int    `json:"gid"`
	Size int64  `json:"size"`
}

// Response is the JSON of an 'R' frame.
type Response struct {
	Error string      `json:"error,omitempty"`
	Hello *HelloInfo  `json:"hello,omitempty"`
	Exec  *ExecResult `json:"exec,omitempty"`
	File  *FileInfo   `json:"file,omitempty"`
}

// HelloInfo is what Hello reports.
type HelloInfo struct {
	Version string  `json:"version"`
	Kernel  string  `json:"kernel"`
	Uptime  float64 `json:"uptime"` // seconds since the guest kernel booted
	// ModuleErrors lists modules the agent failed to load at boot.
	ModuleErrors []string `json:"module_errors,omitempty"`
}

// ExecResult is how a command ended: its exit status, or for a command
// killed by a signal 128+signal and the signal's name.
type ExecResult struct {
	ExitStatus int    `json:"exit_status"`
	Signal     string `json:"signal,omitempty"`
}

// FileInfo describes a downloaded file.
type FileInfo struct {
	Mode uint32 `json:"mode"` // permission bits, setuid/setgid/sticky as in chmod
	Uid  int    `json:"uid"`
	Gid  int    `json:"gid"`
	Size int64  `json:"size"`
}
