package ext4

import (
	"bytes"
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// scanBuf is plainData's read size.
const scanBuf = 64 << 10

var zeros [ext4spec.BlockSize]byte

// plainData reports whether the first size bytes of f have no hole and no
// all-zero block (the last, partial one zero-padded, as the writer pads it),
// reading them with pread into buf (a multiple of the block size). A file
// that turns out shorter than size is left to the copy to report.
func plainData(f *os.File, size int64, buf []byte) (bool, error) {
	fd := int(f.Fd())
	hole, err := unix.Seek(fd, 0, unix.SEEK_HOLE)
	if err == nil && hole < size {
		return false, nil
	}
	// SEEK_HOLE moved the offset, where the copy starts.
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		return false, err
	}
	for off := int64(0); off < size; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return false, err
		}
		if n == 0 {
			return true, nil
		}
		for i := 0; i < n; i += ext4spec.BlockSize {
			b := buf[i:min(i+ext4spec.BlockSize, n)]
			if bytes.Equal(b, zeros[:len(b)]) {
				return false, nil
			}
		}
		off += int64(n)
	}
	return true, nil
}

// holeReader reads the first size bytes of f, giving its holes as zeros
// without reading them; a file shorter than size ends early, and a byte
// beyond size is given, so that the copy sees a file that shrank or grew.
type holeReader struct {
	f          *os.File
	size       int64
	end        int64 // min(size, the file's size when the reading started)
	pos        int64
	data, hole int64 // [data, hole) is the current data range; pos < data: a hole
	started    bool
}

func (r *holeReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !r.started {
		r.started = true
		fi, err := r.f.Stat()
		if err != nil {
			return 0, err
		}
		r.end = min(r.size, fi.Size())
	}
	if r.pos >= r.end {
		if r.pos < r.size {
			return 0, io.EOF // shorter than size
		}
		n, err := r.f.ReadAt(p[:1], r.pos)
		r.pos += int64(n)
		return n, err
	}
	if r.pos >= r.hole {
		r.next()
	}
	if r.pos < r.data {
		n := int(min(int64(len(p)), r.data-r.pos))
		clear(p[:n])
		r.pos += int64(n)
		return n, nil
	}
	n, err := r.f.ReadAt(p[:min(int64(len(p)), r.hole-r.pos)], r.pos)
	r.pos += int64(n)
	if errors.Is(err, io.EOF) && n > 0 {
		err = nil
	}
	return n, err
}

// next finds the data range at or after pos: up to the end, a hole when
// there is none, and all data when the filesystem cannot tell.
func (r *holeReader) next() {
	fd := int(r.f.Fd())
	d, err := unix.Seek(fd, r.pos, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		r.data, r.hole = r.end, r.end
		return
	}
	var h int64
	if err == nil {
		h, err = unix.Seek(fd, d, unix.SEEK_HOLE)
	}
	if err != nil {
		r.data, r.hole = r.pos, r.end
		return
	}
	r.data, r.hole = min(d, r.end), min(h, r.end)
	if r.hole <= r.pos { // the file changed under us: read what is there
		r.data, r.hole = r.pos, r.end
	}
}
