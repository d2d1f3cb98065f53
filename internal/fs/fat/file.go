package fat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// file receives the content of one regular file: exactly Header.Size bytes,
// written straight to its clusters.
type file struct {
	w       *Writer
	name    string
	size    int64
	written int64
	base    int64 // offset of the content in the filesystem
}

// Create adds a regular file of h.Size bytes, allocating its clusters in one
// run, and returns the writer for its content: exactly h.Size bytes through
// Write or io.Copy (whose ReadFrom uses copy_file_range for an *os.File).
// Running out of space is not fatal: the file is not added and the Writer
// stays usable.
func (w *Writer) Create(h Header) (io.Writer, error) {
	if h.Size < 0 || h.Size > math.MaxUint32 {
		return nil, fmt.Errorf("fat: %q: size %d out of range (FAT32 files are below 4 GiB)", h.Name, h.Size)
	}
	parent, base, err := w.enter(h.Name)
	if err != nil {
		return nil, err
	}
	cs := w.g.clusterSize()
	var first uint32
	if n := (h.Size + cs - 1) / cs; n > 0 {
		if first, err = w.alloc(uint32(n)); err != nil {
			return nil, fmt.Errorf("fat: %q: %w", h.Name, err)
		}
	}
	attr := byte(fatspec.AttrArchive)
	if h.Mode&0o222 == 0 {
		attr |= fatspec.AttrReadOnly
	}
	parent.add(dirent{name: base, attr: attr, mtime: h.Mtime, first: first, size: uint32(h.Size)})
	f := &file{w: w, name: h.Name, size: h.Size}
	if first != 0 {
		f.base = w.g.clusterOffset(first)
	}
	w.cur = f
	return f, nil
}

func (f *file) check() error {
	if err := f.w.usable(); err != nil {
		return err
	}
	if f.w.cur != f {
		return fmt.Errorf("fat: %q: write after the next entry was added", f.name)
	}
	return nil
}

func (f *file) complete() error {
	if f.written != f.size {
		return fmt.Errorf("%w: %q has %d of %d bytes", ErrWriteTooShort, f.name, f.written, f.size)
	}
	return nil
}

func (f *file) Write(p []byte) (int, error) {
	if err := f.check(); err != nil {
		return 0, err
	}
	var tooLong bool
	if rem := f.size - f.written; int64(len(p)) > rem {
		p, tooLong = p[:rem], true
	}
	if err := f.w.writeData(p, f.base+f.written); err != nil {
		return 0, f.w.fail(err)
	}
	f.written += int64(len(p))
	if tooLong {
		return len(p), ErrWriteTooLong
	}
	return len(p), nil
}

const page = 4096

var zeroPage = make([]byte, page)

// writeData writes p at off, leaving out whole zero pages when the range is
// known to be zero so that they stay holes.
func (w *Writer) writeData(p []byte, off int64) error {
	if !w.zeroed {
		return w.writeAt(p, off)
	}
	start := -1 // first byte of the pending non-zero stretch
	for i := 0; i < len(p); {
		n := min(len(p)-i, page-int((off+int64(i))%page))
		if bytes.Equal(p[i:i+n], zeroPage[:n]) {
			if start >= 0 {
				if err := w.writeAt(p[start:i], off+int64(start)); err != nil {
					return err
				}
				start = -1
			}
		} else if start < 0 {
			start = i
		}
		i += n
	}
	if start >= 0 {
		return w.writeAt(p[start:], off+int64(start))
	}
	return nil
}

// ReadFrom copies the rest of the file's content from r. A source that ends
// early is reported by the next entry or Close, as for Write.
func (f *file) ReadFrom(r io.Reader) (int64, error) {
	if err := f.check(); err != nil {
		return 0, err
	}
	var total int64
	if src, ok := r.(*os.File); ok {
		n, err := f.copyFile(src)
		total += n
		if !errors.Is(err, errNoFastPath) {
			if err != nil || f.written < f.size {
				return total, err
			}
			return total, probeExtra(r)
		}
	}
	buf := f.w.buf
	for f.written < f.size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), f.size-f.written)])
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, probeExtra(r)
}

var errNoFastPath = errors.New("no fast path")

// copyFile moves the bytes kernel side with copy_file_range (a reflink or
// in-kernel copy), from src's current position onwards.
func (f *file) copyFile(src *os.File) (int64, error) {
	sfd, dfd := int(src.Fd()), int(f.w.f.Fd())
	var total int64
	for f.written < f.size {
		doff := f.w.off + f.base + f.written
		n, err := unix.CopyFileRange(sfd, nil, dfd, &doff, int(min(f.size-f.written, 1<<30)), 0)
		if err != nil {
			if total == 0 && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EBADF)) {
				return 0, errNoFastPath
			}
			return total, f.w.fail(fmt.Errorf("fat: %q: copy_file_range: %w", f.name, err))
		}
		if n == 0 {
			break // source ended early
		}
		f.written += int64(n)
		total += int64(n)
	}
	return total, nil
}

// probeExtra reports ErrWriteTooLong if r holds more than the header said.
func probeExtra(r io.Reader) error {
	var one [1]byte
	if n, _ := r.Read(one[:]); n > 0 {
		return ErrWriteTooLong
	}
	return nil
}
