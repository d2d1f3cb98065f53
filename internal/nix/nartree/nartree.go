// Package nartree reads a NAR (Nix ARchive) as a sequence of validated entries, in NAR
// order: a directory before its contents, names in byte order, which is the sorted walk
// the ext4 writer wants.
//
// A NAR from a binary cache is bytes we did not write: every name is checked (no "/",
// NUL, "." or "..", at most MaxNameLen bytes, strictly increasing within a directory),
// depth and path length are bounded, and nothing is buffered beyond one token, so memory
// does not depend on the archive. The framing primitives come from go-nix's wire
// package; the node grammar is parsed here, without recursion or goroutines, because
// go-nix's nar.Reader recurses once per directory level with no depth bound and leaves its
// parser goroutine blocked (holding the source) when a caller stops early.
package nartree

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/nix-community/go-nix/pkg/wire"
)

const (
	// MaxNameLen is the longest entry name: ext4's (and Linux's NAME_MAX) limit.
	MaxNameLen = 255
	// MaxPathLen bounds an entry's path inside the NAR; with "/nix/store/<hash>-<name>/"
	// in front it still fits Linux's PATH_MAX of 4096.
	MaxPathLen = 3800
	// MaxDepth bounds directory nesting (Linux resolves at most PATH_MAX/2 levels anyway).
	MaxDepth = 256
	// MaxTargetLen is the longest symlink target (PATH_MAX - 1, as Nix and go-nix).
	MaxTargetLen = 4095
	// tokenMax is the longest keyword of the NAR grammar ("executable", "directory").
	tokenMax = 16
	magic    = "nix-archive-1"
)

// Type is the kind of an entry.
type Type uint8

const (
	Regular Type = iota + 1
	Directory
	Symlink
)

func (t Type) String() string {
	switch t {
	case Regular:
		return "regular"
	case Directory:
		return "directory"
	case Symlink:
		return "symlink"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Entry is one node of the archive.
type Entry struct {
	// Path is relative to the archive's root, "/"-separated; the root itself is ".".
	// It always satisfies io/fs.ValidPath.
	Path string
	// Depth is 0 for the root, 1 for its entries, and so on.
	Depth      int
	Type       Type
	Executable bool   // regular files only
	Size       int64  // regular files only: the content length
	Target     string // symlinks only: the target, verbatim (may be absolute or dangling)
}

type dirFrame struct {
	path string
	last string // the previous entry name: names must strictly increase
}

// Reader yields the entries of one NAR. It is not safe for concurrent use.
type Reader struct {
	r       io.Reader
	cr      *counter
	stack   []dirFrame
	started bool
	// pending is set after a regular file or symlink is returned: its closing ")" (and,
	// for a file, the rest of its contents) must be consumed before the next token.
	pending bool
	inFile  bool  // a regular file's contents are being read
	size    int64 // its content length (the padding follows it)
	left    int64 // bytes of content not yet read
	err     error
}

// NewReader checks the archive magic and returns a Reader positioned before the root.
func NewReader(r io.Reader) (*Reader, error) { return NewReaderSize(r, -1) }

// NewReaderSize is NewReader for an archive known to be size bytes (a narinfo's NarSize;
// negative: unknown): a file whose claimed length exceeds what is left of the archive is
// refused at its header, before a caller plans with it, and a longer archive is refused.
func NewReaderSize(r io.Reader, size int64) (*Reader, error) {
	cr := &counter{r: r, limit: size}
	if err := expect(cr, magic); err != nil {
		return nil, fmt.Errorf("not a NAR: %w", err)
	}
	return &Reader{r: cr, cr: cr}, nil
}

// Skipper is a source that can pass over n bytes without reading them (a
// file, by seeking): the contents a caller does not read are skipped so.
// Skipped bytes are not checked: only a source already verified (a spooled
// NAR whose hash was checked as it was written) should be one.
type Skipper interface {
	Skip(n int64) error
}

// counter counts the bytes read and, with a limit, refuses to read past it.
type counter struct {
	r     io.Reader
	n     int64
	limit int64
}

func (c *counter) Read(p []byte) (int, error) {
	if c.limit >= 0 {
		if c.n >= c.limit {
			return 0, io.EOF
		}
		if int64(len(p)) > c.limit-c.n {
			p = p[:c.limit-c.n]
		}
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// skip passes over n bytes of the source, by Skip where it has one.
func (c *counter) skip(n int64) error {
	if c.limit >= 0 && n > c.limit-c.n {
		return io.ErrUnexpectedEOF
	}
	if s, ok := c.r.(Skipper); ok {
		if err := s.Skip(n); err != nil {
			return err
		}
		c.n += n
		return nil
	}
	m, err := io.CopyN(io.Discard, c, n)
	if err == io.EOF && m < n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Next returns the next entry. After the root node is complete it checks the source is
// exhausted and returns io.EOF (so a hash-verifying source gets to check its digest); any
// other error is sticky.
func (r *Reader) Next() (*Entry, error) {
	if r.err != nil {
		return nil, r.err
	}
	e, err := r.next()
	if err != nil {
		if err != io.EOF {
			err = fmt.Errorf("NAR: %w", err)
		}
		r.err = err
		return nil, err
	}
	return e, nil
}

// Read reads the contents of the regular file last returned by Next.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if !r.inFile || r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.left -= int64(n)
	if err == io.EOF && r.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		r.err = fmt.Errorf("NAR: file contents: %w", err)
		return n, r.err
	}
	if r.left == 0 {
		return n, io.EOF
	}
	return n, nil
}

func (r *Reader) next() (*Entry, error) {
	if !r.started {
		r.started = true
		return r.node(".", 0)
	}
	if r.pending {
		if err := r.finishLeaf(); err != nil {
			return nil, err
		}
	}
	for {
		if len(r.stack) == 0 {
			// The root is complete: the archive must end here.
			if r.cr.limit >= 0 && r.cr.n != r.cr.limit {
				return nil, fmt.Errorf("archive ends at byte %d, not at its size %d", r.cr.n, r.cr.limit)
			}
			var b [1]byte
			if n, err := io.ReadFull(r.cr.r, b[:]); n != 0 {
				return nil, errors.New("trailing data after the root node")
			} else if err != io.EOF {
				return nil, err
			}
			return nil, io.EOF
		}
		top := &r.stack[len(r.stack)-1]
		tok, err := readString(r.r, tokenMax)
		if err != nil {
			return nil, err
		}
		switch tok {
		case "entry":
			name, err := r.entryName(top)
			if err != nil {
				return nil, err
			}
			p := name
			if top.path != "." {
				p = top.path + "/" + name
			}
			return r.node(p, len(r.stack))
		case ")":
			r.stack = r.stack[:len(r.stack)-1]
			if err := r.closeEntry(); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("directory %s: unexpected token %q", top.path, tok)
		}
	}
}

// entryName reads `( name <name> node` and validates the name against its directory.
func (r *Reader) entryName(top *dirFrame) (string, error) {
	if err := expect(r.r, "("); err != nil {
		return "", err
	}
	if err := expect(r.r, "name"); err != nil {
		return "", err
	}
	name, err := readString(r.r, MaxNameLen)
	if err != nil {
		return "", fmt.Errorf("directory %s: entry name: %w", top.path, err)
	}
	if err := ValidName(name); err != nil {
		return "", fmt.Errorf("directory %s: %w", top.path, err)
	}
	if top.last != "" && name <= top.last {
		return "", fmt.Errorf("directory %s: entry %q after %q: not strictly sorted", top.path, name, top.last)
	}
	top.last = name
	if err := expect(r.r, "node"); err != nil {
		return "", err
	}
	return name, nil
}

// node reads a node's header and returns its entry. A directory is pushed; a file's
// contents are left for Read.
func (r *Reader) node(path string, depth int) (*Entry, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("%s: deeper than %d levels", path, MaxDepth)
	}
	if len(path) > MaxPathLen {
		return nil, fmt.Errorf("%.64s...: path longer than %d bytes", path, MaxPathLen)
	}
	if err := expect(r.r, "("); err != nil {
		return nil, err
	}
	if err := expect(r.r, "type"); err != nil {
		return nil, err
	}
	typ, err := readString(r.r, tokenMax)
	if err != nil {
		return nil, err
	}
	e := &Entry{Path: path, Depth: depth}
	switch typ {
	case "directory":
		e.Type = Directory
		r.stack = append(r.stack, dirFrame{path: path})
		return e, nil
	case "symlink":
		e.Type = Symlink
		if err := expect(r.r, "target"); err != nil {
			return nil, err
		}
		if e.Target, err = readString(r.r, MaxTargetLen); err != nil {
			return nil, fmt.Errorf("%s: symlink target: %w", path, err)
		}
		if e.Target == "" || strings.IndexByte(e.Target, 0) >= 0 {
			return nil, fmt.Errorf("%s: symlink target empty or containing NUL", path)
		}
		r.pending = true
		return e, nil
	case "regular":
		e.Type = Regular
		tok, err := readString(r.r, tokenMax)
		if err != nil {
			return nil, err
		}
		if tok == "executable" {
			e.Executable = true
			if err := expect(r.r, ""); err != nil {
				return nil, err
			}
			if tok, err = readString(r.r, tokenMax); err != nil {
				return nil, err
			}
		}
		if tok != "contents" {
			return nil, fmt.Errorf("%s: unexpected token %q, expected \"contents\"", path, tok)
		}
		n, err := wire.ReadUint64(r.r)
		if err != nil {
			return nil, eof(err)
		}
		if n > math.MaxInt64 || r.cr.limit >= 0 && n > uint64(r.cr.limit-r.cr.n) {
			return nil, fmt.Errorf("%s: content length %d exceeds the archive", path, n)
		}
		e.Size = int64(n)
		r.inFile, r.size, r.left = true, e.Size, e.Size
		r.pending = true
		return e, nil
	}
	return nil, fmt.Errorf("%s: unknown node type %q", path, typ)
}

// finishLeaf skips what the caller did not read of a file, then reads the node's ")".
func (r *Reader) finishLeaf() error {
	r.pending = false
	if r.inFile {
		r.inFile = false
		if r.left > 0 {
			err := r.cr.skip(r.left)
			r.left = 0
			if err != nil {
				return eof(err)
			}
		}
		if err := padding(r.r, r.size); err != nil {
			return err
		}
	}
	if err := expect(r.r, ")"); err != nil {
		return err
	}
	return r.closeEntry()
}

// closeEntry reads the ")" that closes a directory entry, unless the node was the root.
func (r *Reader) closeEntry() error {
	if len(r.stack) == 0 {
		return nil
	}
	return expect(r.r, ")")
}

// ValidName reports why name cannot be a directory entry, or nil.
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("empty entry name")
	case name == "." || name == "..":
		return fmt.Errorf("entry name %q", name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("entry name longer than %d bytes", MaxNameLen)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("entry name %q contains '/' or NUL", name)
	}
	return nil
}

// readString reads a length-prefixed, zero-padded string of at most max bytes. Not
// wire.ReadString: its ReadBytesFull drops the padding check's error (a deferred Close),
// so non-zero or missing padding would pass and an archive would not be canonical.
func readString(r io.Reader, max uint64) (string, error) {
	n, err := wire.ReadUint64(r)
	if err != nil {
		return "", eof(err)
	}
	if n > max {
		return "", fmt.Errorf("string of %d bytes exceeds maximum of %d", n, max)
	}
	buf := make([]byte, (n+7)&^7) // max ≤ MaxTargetLen: small
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", eof(err)
	}
	for _, b := range buf[n:] {
		if b != 0 {
			return "", errors.New("invalid padding: not zero bytes")
		}
	}
	return string(buf[:n]), nil
}

func expect(r io.Reader, want string) error {
	s, err := readString(r, uint64(len(want)))
	if err != nil {
		return fmt.Errorf("expected %q: %w", want, err)
	}
	if s != want {
		return fmt.Errorf("expected %q, got %q", want, s)
	}
	return nil
}

// eof turns a clean EOF inside the archive into io.ErrUnexpectedEOF.
func eof(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// padding reads the zero bytes that pad a field of n bytes to a multiple of 8.
func padding(r io.Reader, n int64) error {
	var buf [8]byte
	pad := buf[:(8-n%8)%8]
	if _, err := io.ReadFull(r, pad); err != nil {
		return eof(err)
	}
	for _, b := range pad {
		if b != 0 {
			return fmt.Errorf("file contents: padding is not zero bytes: %x", pad)
		}
	}
	return nil
}
