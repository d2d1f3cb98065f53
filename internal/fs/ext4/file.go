package ext4

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// File receives the content of one regular file: exactly Header.Size bytes
// through Write or ReadFrom. It is complete (and its inode written) as soon
// as the last byte arrives.
type File struct {
	w       *Writer
	ino     uint32
	hdr     Header
	written int64
	pending int    // bytes staged in w.buf
	lblk    uint64 // logical block of w.buf[0]
	exts    []ext4spec.Extent
	blocks  uint64 // data blocks allocated
}

var zeroBlock = make([]byte, ext4spec.BlockSize)

// Create adds a regular file of h.Size bytes and returns the writer for its
// content.
func (w *Writer) Create(h Header) (*File, error) {
	if h.Size < 0 || uint64(h.Size) > uint64(1<<32-1)*ext4spec.BlockSize {
		return nil, fmt.Errorf("ext4: %q: size %d out of range", h.Name, h.Size)
	}
	parent, base, err := w.enter(h.Name)
	if err != nil {
		return nil, err
	}
	ino, err := w.allocIno()
	if err != nil {
		return nil, err
	}
	parent.add(base, ino, ftReg)
	f := &File{w: w, ino: ino, hdr: h}
	w.cur = f
	w.stats.Files++
	if h.Size == 0 {
		if err := f.finish(); err != nil {
			return nil, w.fail(err)
		}
	}
	return f, nil
}

// Inode is the file's inode number, for Link.
func (f *File) Inode() uint32 { return f.ino }

func (f *File) check() error {
	if err := f.w.usable(); err != nil {
		return err
	}
	if f.w.cur != f {
		return fmt.Errorf("ext4: %q: write after the next entry was added", f.hdr.Name)
	}
	return nil
}

// Write stages p and writes out whole buffers, turning zero blocks into holes.
func (f *File) Write(p []byte) (int, error) {
	if err := f.check(); err != nil {
		return 0, err
	}
	var tooLong bool
	if rem := f.hdr.Size - f.written; int64(len(p)) > rem {
		p, tooLong = p[:rem], true
	}
	n := 0
	for len(p) > 0 {
		c := copy(f.w.buf[f.pending:], p)
		f.pending += c
		f.written += int64(c)
		n += c
		p = p[c:]
		if f.pending == len(f.w.buf) {
			if err := f.flush(); err != nil {
				return n, f.w.fail(err)
			}
		}
	}
	if f.written == f.hdr.Size && f.pending >= 0 {
		if err := f.finish(); err != nil {
			return n, f.w.fail(err)
		}
	}
	if tooLong {
		return n, ErrWriteTooLong
	}
	return n, nil
}

// flush writes the staged bytes (zero padded to a block) and empties w.buf.
func (f *File) flush() error {
	if f.pending == 0 {
		return nil
	}
	nb := (f.pending + ext4spec.BlockSize - 1) / ext4spec.BlockSize
	buf := f.w.buf[:nb*ext4spec.BlockSize]
	clear(buf[f.pending:])
	i := 0
	for i < nb {
		if bytes.Equal(buf[i*ext4spec.BlockSize:(i+1)*ext4spec.BlockSize], zeroBlock) {
			i++
			continue
		}
		j := i + 1
		for j < nb && !bytes.Equal(buf[j*ext4spec.BlockSize:(j+1)*ext4spec.BlockSize], zeroBlock) {
			j++
		}
		if err := f.w.writeBlocks(&f.exts, f.lblk+uint64(i), buf[i*ext4spec.BlockSize:j*ext4spec.BlockSize], uint64(j-i)); err != nil {
			return err
		}
		f.blocks += uint64(j - i)
		i = j
	}
	f.lblk += uint64(nb)
	f.pending = 0
	return nil
}

func (f *File) finish() error {
	if err := f.flush(); err != nil {
		return err
	}
	f.pending = -1 // finished
	h := &f.hdr
	err := f.w.finishInode(f.ino, f.exts, &inodeInfo{
		mode:  ext4spec.ModeRegular | unixMode(h.Mode),
		uid:   h.Uid,
		gid:   h.Gid,
		size:  uint64(h.Size),
		links: 1,
		flags: ext4spec.FlagExtents,
		time:  h.Mtime,
	}, f.blocks)
	f.w.stats.Bytes += h.Size
	f.exts = nil
	return err
}

// ReadFrom copies the rest of the file's content from r. The image depends
// on the bytes alone, not on how r stores them: every all-zero block becomes
// a hole, as the buffered copy below makes it. A large *os.File with neither
// holes nor zero blocks (plainData) has its data copied with
// copy_file_range (a reflink where the filesystem shares blocks), which
// writes exactly what the buffer would; any other *os.File goes through the
// buffer with its holes given as zeros without reading them.
func (f *File) ReadFrom(r io.Reader) (int64, error) {
	if err := f.check(); err != nil {
		return 0, err
	}
	// From its start only: plainData and holeReader read the file from 0.
	if src, ok := r.(*os.File); ok && f.written == 0 && f.hdr.Size >= CopyFileRangeMin && atStart(src) {
		if f.w.scan == nil {
			f.w.scan = make([]byte, scanBuf)
		}
		plain, err := plainData(src, f.hdr.Size, f.w.scan)
		if err != nil {
			return 0, f.w.fail(fmt.Errorf("ext4: %q: %w", f.hdr.Name, err))
		}
		if !plain {
			r = &holeReader{f: src, size: f.hdr.Size}
		} else if n, err := f.readFromFile(src); !errors.Is(err, errNoFastPath) {
			return n, err
		}
	}
	var total int64
	for f.pending >= 0 && f.written < f.hdr.Size {
		rem := min(int64(len(f.w.buf)-f.pending), f.hdr.Size-f.written)
		n, err := io.ReadFull(r, f.w.buf[f.pending:f.pending+int(rem)])
		if n > 0 {
			if _, werr := f.Write(f.w.buf[f.pending : f.pending+n]); werr != nil {
				return total + int64(n), werr
			}
		}
		total += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil // short: the next entry or Close reports it
		}
		if err != nil {
			return total, err
		}
	}
	return total, probeExtra(r)
}

func atStart(f *os.File) bool {
	at, err := f.Seek(0, io.SeekCurrent)
	return err == nil && at == 0
}

// probeExtra reports ErrWriteTooLong if r holds more than the header said.
func probeExtra(r io.Reader) error {
	var one [1]byte
	if n, _ := r.Read(one[:]); n > 0 {
		return ErrWriteTooLong
	}
	return nil
}

// CopyFileRangeMin is the size from which a file is copied with
// copy_file_range (when it has no holes and no zero blocks); smaller ones go
// through the buffer, where a copy costs less than the system calls around
// copy_file_range. The image is the same either way. A variable for the
// bench's sweep (cmd/bench, copy paths), which chose it.
var CopyFileRangeMin int64 = 256 << 10

var errNoFastPath = errors.New("no fast path")

// copyFileRange is a variable so tests can force the pread/pwrite fallback.
var copyFileRange = unix.CopyFileRange

// readFromFile maps the source's data ranges onto newly allocated blocks and
// copies them with copy_file_range, falling back to pread/pwrite.
func (f *File) readFromFile(src *os.File) (int64, error) {
	base, err := src.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, errNoFastPath
	}
	sfd := int(src.Fd())
	size := f.hdr.Size
	fallback := false
	var pos int64 // bytes of this file covered so far
	for pos < size {
		ds, err := unix.Seek(sfd, base+pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains (or the source is short)
		}
		if err != nil {
			if pos == 0 {
				return 0, errNoFastPath
			}
			return pos, f.w.fail(fmt.Errorf("ext4: %q: SEEK_DATA: %w", f.hdr.Name, err))
		}
		he, err := unix.Seek(sfd, ds, unix.SEEK_HOLE)
		if err != nil {
			return pos, f.w.fail(fmt.Errorf("ext4: %q: SEEK_HOLE: %w", f.hdr.Name, err))
		}
		ds, he = ds-base, min(he-base, size)
		if ds >= size {
			break
		}
		// Whole blocks only; a block may already be done by the last range.
		lb := max(uint64(ds)/ext4spec.BlockSize, f.lblk)
		le := (uint64(he) + ext4spec.BlockSize - 1) / ext4spec.BlockSize
		for lb < le {
			p, got, err := f.w.a.alloc(le - lb)
			if err != nil {
				return pos, f.w.fail(err)
			}
			from := int64(lb) * ext4spec.BlockSize
			n := min(int64(got)*ext4spec.BlockSize, size-from)
			if err := f.copyRange(sfd, base+from, p, n, &fallback); err != nil {
				return pos, f.w.fail(err)
			}
			f.exts = addExtent(f.exts, uint32(lb), p, got)
			f.blocks += got
			lb += got
		}
		f.lblk = le
		pos = he
	}
	if _, err := src.Seek(base+size, io.SeekStart); err != nil {
		return size, f.w.fail(err)
	}
	// A source shorter than the header would otherwise look complete.
	if st, err := src.Stat(); err == nil && st.Size() < base+size {
		return 0, f.w.fail(fmt.Errorf("%w: %q: source has %d bytes", ErrWriteTooShort, f.hdr.Name, st.Size()-base))
	}
	f.written = size
	f.lblk = (uint64(size) + ext4spec.BlockSize - 1) / ext4spec.BlockSize
	if err := f.finish(); err != nil {
		return size, f.w.fail(err)
	}
	return size, probeExtra(src)
}

func (f *File) copyRange(sfd int, soff int64, block uint64, n int64, fallback *bool) error {
	doff := f.w.off + int64(block)*ext4spec.BlockSize
	dfd := int(f.w.f.Fd())
	for n > 0 && !*fallback {
		c, err := copyFileRange(sfd, &soff, dfd, &doff, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EBADF) {
				*fallback = true
				break
			}
			return fmt.Errorf("ext4: %q: copy_file_range: %w", f.hdr.Name, err)
		}
		if c == 0 {
			return fmt.Errorf("%w: %q: source ended early", ErrWriteTooShort, f.hdr.Name)
		}
		f.w.wb.wrote(doff-int64(c), int64(c))
		n -= int64(c)
	}
	buf := f.w.buf
	for n > 0 {
		c := min(n, int64(len(buf)))
		for got := int64(0); got < c; {
			r, err := unix.Pread(sfd, buf[got:c], soff+got)
			if err != nil {
				return fmt.Errorf("ext4: %q: read: %w", f.hdr.Name, err)
			}
			if r == 0 {
				return fmt.Errorf("%w: %q: source ended early", ErrWriteTooShort, f.hdr.Name)
			}
			got += int64(r)
		}
		if _, err := f.w.f.WriteAt(buf[:c], doff); err != nil {
			return fmt.Errorf("ext4: write: %w", err)
		}
		f.w.wb.wrote(doff, c)
		soff += c
		doff += c
		n -= c
	}
	return nil
}
