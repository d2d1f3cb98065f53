package binarycache

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/xi2/xz"
)

const (
	// XZDictCap caps the xz dictionary (allocated as the stream asks, up to this): Nix
	// compresses with xz preset 6, an 8 MiB dictionary (preset 7: 16 MiB); a stream that
	// needs more fails with xz.ErrMemlimit instead of growing memory.
	XZDictCap = 16 << 20
	// ZstdMaxWindow caps a zstd frame's window (Nix's levels use ≤ 8 MiB); larger frames
	// are refused by the decoder.
	ZstdMaxWindow = 16 << 20
	// zstdInFlight is how many zstd blocks (≤ 128 KiB each) decode at once.
	zstdInFlight = 4
	// readBuf is the buffered read size on spool files.
	readBuf = 256 << 10
)

var errNoSubstituter = errors.New("PathInfo not from Client.PathInfo or Client.Closure: no substituter")

// MismatchError is a NAR whose bytes do not match its narinfo.
type MismatchError struct {
	Path, URL string
	What      string // "FileHash", "FileSize", "NarHash" or "NarSize"
	Want, Got string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s: %s mismatch for %s: narinfo says %s, got %s", e.Path, e.What, e.URL, e.Want, e.Got)
}

func hashString(h *nixhash.Hash) string { return h.Format(nixhash.NixBase32, true) }

func digestString(sum []byte) string {
	return hashString(nixhash.MustNewHash(nixhash.SHA256, sum))
}

// fileLimit is the most compressed bytes accepted for p: FileSize when given, else a
// bound no real compressor exceeds (incompressible data grows by well under 1/16).
func fileLimit(p *PathInfo) int64 {
	if p.FileSize != 0 {
		return int64(p.FileSize)
	}
	return int64(p.NarSize + p.NarSize/16 + 1<<20)
}

// checkFile compares the compressed bytes seen (n, their sha256 sum) with FileSize and
// FileHash.
func checkFile(p *PathInfo, url string, n int64, sum []byte) error {
	if p.FileSize != 0 && uint64(n) != p.FileSize {
		return &MismatchError{p.Path, url, "FileSize", fmt.Sprint(p.FileSize), fmt.Sprint(n)}
	}
	if p.FileHash != nil && !bytes.Equal(sum, p.FileHash.Digest()) {
		return &MismatchError{p.Path, url, "FileHash", hashString(p.FileHash), digestString(sum)}
	}
	return nil
}

// Spooled is one NAR downloaded into a temporary file, decompressed as it arrived and
// verified: FileHash and FileSize of the bytes the cache sent, NarHash and NarSize of the
// NAR. Open reads it as often as needed, at the cost of reading a file: a closure is
// walked three times (its file sizes, the sizing walk, the writing walk), and three
// decompressions and hashes of every NAR took longer than the download.
type Spooled struct {
	Info       *PathInfo
	file       string
	size       int64 // the NAR's bytes, on disk
	downloaded int64 // the compressed bytes the cache sent
}

// Spool downloads p's NAR into a new file in dir (retrying transient failures from the
// start), decompressed and verified. On any error nothing is left in dir.
func (c *Client) Spool(ctx context.Context, p *PathInfo, dir string) (*Spooled, error) {
	return c.SpoolProgress(ctx, p, dir, nil)
}

// SpoolProgress is Spool, calling progress (if not nil) with the number of compressed
// bytes each read from the cache adds, as they arrive. A retried download starts
// over: progress is then called with the negative count of the bytes thrown away.
func (c *Client) SpoolProgress(ctx context.Context, p *PathInfo, dir string, progress func(n int64)) (*Spooled, error) {
	if p.sub == nil {
		return nil, errNoSubstituter
	}
	f, err := os.CreateTemp(dir, "nar-*.spool")
	if err != nil {
		return nil, err
	}
	name := f.Name()
	var cr *countingReader
	var n int64
	url := p.sub.display(p.URL)
	err = c.withRetries(ctx, "GET "+url, func() error {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if err := f.Truncate(0); err != nil {
			return err
		}
		if progress != nil && cr != nil && cr.n > 0 {
			progress(-cr.n)
		}
		body, err := c.openOnce(ctx, p.sub, p.URL)
		if err != nil {
			cr = nil
			return err
		}
		defer body.Close()
		var fileCheck func() error
		cr, fileCheck = verifying(p, url, body, progress)
		// The NAR goes to the spool file from the hash's goroutine, beside
		// the decoder's.
		nr, err := newNARReader(p, url, cr, io.NopCloser(nil), fileCheck, f)
		if err != nil {
			cr.h.stop()
			return err
		}
		defer nr.release()
		// drain ends without error only at the narReader's verified io.EOF.
		n, err = drain(nr)
		if cr.err != nil {
			return cr.err // the download failed (retried if transient), not the NAR
		}
		// The cache sent all it had, and it did not decode (a mismatch was
		// checked already): if it is not the file the narinfo describes, say
		// that (both hashes), not how the decoder choked on it.
		var m *MismatchError
		if err != nil && !errors.As(err, &m) {
			if ferr := fileCheck(); errors.As(ferr, &m) {
				return ferr
			}
		}
		return err
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return nil, err
	}
	return &Spooled{Info: p, file: name, size: n, downloaded: cr.n}, nil
}

// drain reads r to its end, discarding the bytes (a narReader with a sink has
// written them already), in large reads: io.Discard would read 8 KiB at a time.
func drain(r io.Reader) (int64, error) {
	buf := make([]byte, hashChunk)
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// verifying wraps a NAR download's body: the reader counts and hashes the compressed
// bytes (at most fileLimit(p)+1 of them), and fileCheck drains what the decoder left
// and checks them against FileSize and FileHash.
func verifying(p *PathInfo, url string, body io.Reader, progress func(int64)) (*countingReader, func() error) {
	cr := &countingReader{r: io.LimitReader(body, fileLimit(p)+1), h: newBGHash(nil), progress: progress}
	return cr, func() error {
		if _, err := io.Copy(io.Discard, cr); err != nil {
			return fmt.Errorf("GET %s: %w", url, err)
		}
		if cr.n > fileLimit(p) {
			return fmt.Errorf("GET %s: more than the %d bytes expected", url, fileLimit(p))
		}
		sum, _ := cr.h.Sum()
		return checkFile(p, url, cr.n, sum)
	}
}

// Size is the NAR's size, on disk.
func (s *Spooled) Size() int64 { return s.size }

// Downloaded is the compressed size the cache sent.
func (s *Spooled) Downloaded() int64 { return s.downloaded }

// Remove deletes the spool file.
func (s *Spooled) Remove() error { return os.Remove(s.file) }

// Open returns the NAR, read from the spool file (verified when it was written).
func (s *Spooled) Open() (io.ReadCloser, error) {
	return os.Open(s.file)
}

// OpenNAR streams p's NAR from its substituter without spooling, decompressed; the final
// Read checks FileSize/FileHash (draining what the decoder left) and NarSize/NarHash.
// Only opening is retried: a failure mid-stream is the caller's error.
func (c *Client) OpenNAR(ctx context.Context, p *PathInfo) (io.ReadCloser, error) {
	if p.sub == nil {
		return nil, errNoSubstituter
	}
	url := p.sub.display(p.URL)
	var body io.ReadCloser
	err := c.withRetries(ctx, "GET "+url, func() error {
		var err error
		body, err = c.openOnce(ctx, p.sub, p.URL)
		return err
	})
	if err != nil {
		return nil, err
	}
	cr, fileCheck := verifying(p, url, body, nil)
	r, err := newNARReader(p, url, cr, body, fileCheck, nil)
	if err != nil {
		cr.h.stop()
		body.Close()
		return nil, err
	}
	return r, nil
}

type countingReader struct {
	r        io.Reader
	h        *bgHash // stopped by the narReader's release
	n        int64
	progress func(int64) // nil: none
	err      error       // the source's error other than io.EOF, if any
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		c.err = err
	}
	c.h.Write(p[:n])
	c.n += int64(n)
	if c.progress != nil && n > 0 {
		c.progress(int64(n))
	}
	return n, err
}

// narReader decompresses and verifies one NAR.
type narReader struct {
	p         *PathInfo
	url       string
	dec       io.Reader
	closeDec  func()
	src       io.Closer
	fileCheck func() error
	side      *countingReader // the compressed bytes
	h         *bgHash
	n         uint64
	err       error
}

// newNARReader decodes side's bytes; sink, if not nil, gets the NAR as it is decoded
// (from another goroutine; write errors end the read).
func newNARReader(p *PathInfo, url string, side *countingReader, src io.Closer, fileCheck func() error, sink io.Writer) (*narReader, error) {
	r := &narReader{p: p, url: url, src: src, fileCheck: fileCheck, side: side, closeDec: func() {}}
	compressed := bufio.NewReaderSize(side, readBuf)
	switch p.Compression {
	case "none":
		r.dec = compressed
	case "xz":
		// xi2/xz (XZ Embedded in Go), not ulikunitz/xz: it decodes about 6× faster here
		// (8 vs 1.4 MB/s on 64 MiB of base64 noise) and allocates only the dictionary
		// the stream declares.
		x, err := xz.NewReader(compressed, XZDictCap)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w (the xz dictionary may be at most %d MiB)", p.Path, url, err, XZDictCap>>20)
		}
		r.dec = x
	case "zstd":
		// Not WithDecoderLowmem: its safe sequence decoder ran 25 % slower
		// here, and the window bound below is what caps memory. Four
		// blocks in flight pipeline the decoder's stages on the second
		// core (1.0 GB/s instead of 0.69 on the debian tree's NAR); the
		// plugin peaks at 54 MiB so (bench), since the plugin binary lost
		// the SDK's commonsteps (67-69 MiB before, over the 64 MiB bound).
		z, err := zstd.NewReader(compressed, zstd.WithDecoderConcurrency(zstdInFlight),
			zstd.WithDecoderMaxWindow(ZstdMaxWindow), zstd.WithDecoderMaxMemory(ZstdMaxWindow))
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", p.Path, url, err)
		}
		r.dec, r.closeDec = z, z.Close
	case "bzip2":
		r.dec = bzip2.NewReader(compressed)
	default:
		return nil, fmt.Errorf("%s: %s: unsupported compression %q", p.Path, url, p.Compression)
	}
	r.h = newBGHash(sink) // last: an error above leaves no goroutine
	return r, nil
}

func (r *narReader) Read(b []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.dec.Read(b)
	r.h.Write(b[:n])
	r.n += uint64(n)
	if r.n > r.p.NarSize {
		r.err = &MismatchError{r.p.Path, r.url, "NarSize", fmt.Sprint(r.p.NarSize), fmt.Sprintf("more than %d", r.p.NarSize)}
		return 0, r.err
	}
	switch {
	case err == io.EOF:
		r.err = r.finish()
		return n, r.err
	case err != nil:
		r.err = fmt.Errorf("%s: reading %s: %w", r.p.Path, r.url, err)
		return n, r.err
	}
	return n, nil
}

func (r *narReader) finish() error {
	if r.n != r.p.NarSize {
		return &MismatchError{r.p.Path, r.url, "NarSize", fmt.Sprint(r.p.NarSize), fmt.Sprint(r.n)}
	}
	if r.fileCheck != nil {
		if err := r.fileCheck(); err != nil {
			return err
		}
	}
	sum, err := r.h.Sum()
	if err != nil {
		return fmt.Errorf("%s: writing the NAR: %w", r.p.Path, err)
	}
	if !bytes.Equal(sum, r.p.NarHash.Digest()) {
		return &MismatchError{r.p.Path, r.url, "NarHash", hashString(r.p.NarHash), digestString(sum)}
	}
	return io.EOF
}

// release stops the decoder and the hash's goroutine.
func (r *narReader) release() {
	r.closeDec()
	r.h.stop()
	r.side.h.stop()
}

func (r *narReader) Close() error {
	r.release()
	if r.err == nil {
		r.err = errors.New("read after close")
	}
	return r.src.Close()
}
