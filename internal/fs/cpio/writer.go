// Package cpio writes cpio archives in the "newc" (SVR4, no CRC) format that
// the Linux kernel unpacks as an initramfs. The API follows archive/tar: write
// a Header, then exactly Size bytes of data, and Close to add the trailer.
//
// Output is deterministic: inode numbers are assigned sequentially in write
// order, device numbers are zero and nothing is taken from the host, so the
// same sequence of calls always produces the same bytes.
package cpio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
)

const (
	magic      = "070701"
	headerLen  = 110 // magic + 13 fields of 8 hex digits
	trailer    = "TRAILER!!!"
	blockSize  = 512 // GNU cpio pads the whole archive to this; the kernel ignores the zeros
	maxField   = math.MaxUint32
	modeTypeIF = 0o170000
)

// Unix file type bits as stored in c_mode.
const (
	sIFIFO  = 0o010000
	sIFCHR  = 0o020000
	sIFDIR  = 0o040000
	sIFBLK  = 0o060000
	sIFREG  = 0o100000
	sIFLNK  = 0o120000
	sIFSOCK = 0o140000
)

var (
	// ErrWriteTooLong is returned when more data is written than the header's Size.
	ErrWriteTooLong = errors.New("initrd: write too long")
	// ErrClosed is returned by calls after Close.
	ErrClosed = errors.New("initrd: writer closed")
)

// Header describes one archive entry.
type Header struct {
	// Name is the path inside the archive. The kernel resolves it from the
	// initramfs root, so relative names ("bin/sh") are conventional.
	Name string
	// Mode holds the permission bits, fs.ModeSetuid/Setgid/Sticky and the
	// type: fs.ModeDir, fs.ModeSymlink, fs.ModeDevice (block),
	// fs.ModeDevice|fs.ModeCharDevice, fs.ModeNamedPipe, fs.ModeSocket, or
	// none of them for a regular file.
	Mode     fs.FileMode
	Uid, Gid uint32
	// Mtime is seconds since the epoch; newc stores 32 bits unsigned.
	Mtime int64
	// Size is the data length of a regular file. For symlinks it is ignored:
	// the writer stores Linkname as the data itself.
	Size     int64
	Linkname string
	// Devmajor and Devminor are the device number of a device node.
	Devmajor, Devminor uint32
}

// Writer writes a newc cpio archive to an underlying io.Writer.
type Writer struct {
	w       io.Writer
	off     int64  // bytes written so far, for alignment
	ino     uint32 // last inode number handed out
	remain  int64  // data bytes still owed for the current entry
	pad     int64  // alignment bytes owed after the current entry's data
	closed  bool
	err     error // sticky: a failed underlying write leaves the archive unusable
	scratch [headerLen]byte
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteHeader finishes the previous entry and writes h. For a regular file,
// exactly h.Size bytes must then be written with Write.
func (w *Writer) WriteHeader(h *Header) error {
	if err := w.usable(); err != nil {
		return err
	}
	if err := w.finishEntry(); err != nil {
		return err
	}
	if h.Name == "" || strings.IndexByte(h.Name, 0) >= 0 {
		return fmt.Errorf("initrd: invalid name %q", h.Name)
	}
	mode, err := unixMode(h.Mode)
	if err != nil {
		return fmt.Errorf("initrd: %s: %w", h.Name, err)
	}
	if h.Mtime < 0 || h.Mtime > maxField {
		return fmt.Errorf("initrd: %s: mtime %d does not fit in 32 bits", h.Name, h.Mtime)
	}

	var size int64
	var data []byte
	switch mode & modeTypeIF {
	case sIFREG:
		if h.Size < 0 || h.Size > maxField {
			return fmt.Errorf("initrd: %s: size %d out of range for newc", h.Name, h.Size)
		}
		size = h.Size
	case sIFLNK:
		if h.Linkname == "" || strings.IndexByte(h.Linkname, 0) >= 0 {
			return fmt.Errorf("initrd: %s: invalid symlink target %q", h.Name, h.Linkname)
		}
		data = []byte(h.Linkname)
		size = int64(len(data))
	default:
		if h.Size != 0 {
			return fmt.Errorf("initrd: %s: only regular files carry data", h.Name)
		}
	}

	// Directories conventionally count "." and the parent's entry; the
	// kernel only looks at nlink to detect hard links among non-directories.
	nlink := uint32(1)
	if mode&modeTypeIF == sIFDIR {
		nlink = 2
	}
	var rmaj, rmin uint32
	if t := mode & modeTypeIF; t == sIFCHR || t == sIFBLK {
		rmaj, rmin = h.Devmajor, h.Devminor
	}
	w.ino++
	if err := w.writeRecord(h.Name, [13]uint32{
		w.ino, mode, h.Uid, h.Gid, nlink, uint32(h.Mtime), uint32(size),
		0, 0, rmaj, rmin, uint32(len(h.Name) + 1), 0,
	}); err != nil {
		return err
	}
	w.remain = size
	w.pad = pad4(size)
	if data != nil {
		_, err := w.Write(data)
		return err
	}
	return nil
}

// Write writes data for the current regular-file entry. It returns
// ErrWriteTooLong if more than the remaining Size bytes are given.
func (w *Writer) Write(p []byte) (int, error) {
	if err := w.usable(); err != nil {
		return 0, err
	}
	tooLong := false
	if int64(len(p)) > w.remain {
		p, tooLong = p[:w.remain], true
	}
	n, err := w.write(p)
	w.remain -= int64(n)
	if err == nil && tooLong {
		err = ErrWriteTooLong
	}
	return n, err
}

// Close finishes the last entry, writes the trailer and pads the archive to
// a multiple of 512 bytes. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if err := w.usable(); err != nil {
		return err
	}
	if err := w.finishEntry(); err != nil {
		return err
	}
	// The trailer has inode 0 and nlink 1, as GNU cpio writes it.
	if err := w.writeRecord(trailer, [13]uint32{
		0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, uint32(len(trailer) + 1), 0,
	}); err != nil {
		return err
	}
	if r := w.off % blockSize; r != 0 {
		if _, err := w.write(make([]byte, blockSize-r)); err != nil {
			return err
		}
	}
	w.closed = true
	return nil
}

func (w *Writer) usable() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return ErrClosed
	}
	return nil
}

// finishEntry checks the previous entry got all its data and aligns the
// stream to 4 bytes for the next header.
func (w *Writer) finishEntry() error {
	if w.remain > 0 {
		return fmt.Errorf("initrd: missed writing %d bytes of the previous entry", w.remain)
	}
	if w.pad > 0 {
		var zero [3]byte
		if _, err := w.write(zero[:w.pad]); err != nil {
			return err
		}
		w.pad = 0
	}
	return nil
}

// writeRecord writes a header, its NUL-terminated name and the padding that
// puts the data on a 4-byte boundary.
func (w *Writer) writeRecord(name string, fields [13]uint32) error {
	b := w.scratch[:]
	copy(b, magic)
	const hex = "0123456789ABCDEF"
	for i, v := range fields {
		f := b[6+8*i : 6+8*i+8]
		for j := 7; j >= 0; j-- {
			f[j] = hex[v&0xf]
			v >>= 4
		}
	}
	if _, err := w.write(b); err != nil {
		return err
	}
	nameLen := int64(len(name) + 1)
	buf := make([]byte, nameLen+pad4(headerLen+nameLen))
	copy(buf, name)
	_, err := w.write(buf)
	return err
}

func (w *Writer) write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.off += int64(n)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = err
	}
	return n, err
}

func pad4(n int64) int64 { return (4 - n%4) % 4 }

// unixMode converts an fs.FileMode to the st_mode bits newc stores.
func unixMode(m fs.FileMode) (uint32, error) {
	v := unixmode.Perm(m)
	switch m.Type() {
	case 0:
		v |= sIFREG
	case fs.ModeDir:
		v |= sIFDIR
	case fs.ModeSymlink:
		v |= sIFLNK
	case fs.ModeDevice:
		v |= sIFBLK
	case fs.ModeDevice | fs.ModeCharDevice:
		v |= sIFCHR
	case fs.ModeNamedPipe:
		v |= sIFIFO
	case fs.ModeSocket:
		v |= sIFSOCK
	default:
		return 0, fmt.Errorf("unsupported file type %v", m.Type())
	}
	return v, nil
}
