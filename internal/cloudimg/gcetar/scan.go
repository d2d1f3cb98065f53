package gcetar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// scanner finds the sparse map of a file's first size bytes by content:
// data is every maximal run of 512-byte blocks that are not all zero (the
// last block may be shorter), as GNU tar's --hole-detection=raw decides.
// SEEK_DATA and SEEK_HOLE only spare reading what the filesystem already
// knows is zero, so a file gives the same map however it is allocated.
type scanner struct {
	f      *os.File
	size   int64
	buf    []byte
	noSeek bool // the filesystem cannot tell its holes: read everything
}

var zeroBlock [blockSize]byte

func newScanner(f *os.File, size int64) *scanner {
	return &scanner{f: f, size: size, buf: make([]byte, 1<<20)}
}

// scan walks the file once. It calls onEntry with each map entry in order,
// the last one being a zero-length entry at size when the file ends in a
// hole (so that extraction restores the size); onData, when not nil, with
// the data bytes in order (a slice valid only during the call); onPos, when
// not nil, with how far the walk has come.
func (s *scanner) scan(onEntry func(entry) error, onData func([]byte) error, onPos func(int64)) error {
	var run entry // the data run being extended; n == 0 when none is
	flush := func() error {
		if run.n == 0 {
			return nil
		}
		e := run
		run = entry{}
		return onEntry(e)
	}
	for off := int64(0); off < s.size; {
		data, hole := s.extent(off)
		if data > off {
			if err := flush(); err != nil {
				return err
			}
			off = data
		}
		for off < hole {
			b := s.buf[:min(int64(len(s.buf)), hole-off)]
			if err := s.readAt(b, off); err != nil {
				return err
			}
			span := -1 // start of the data blocks in b not yet passed to onData
			for i := 0; i < len(b); i += blockSize {
				blk := b[i:min(i+blockSize, len(b))]
				if bytes.Equal(blk, zeroBlock[:len(blk)]) {
					if span >= 0 && onData != nil {
						if err := onData(b[span:i]); err != nil {
							return err
						}
					}
					span = -1
					if err := flush(); err != nil {
						return err
					}
					continue
				}
				if span < 0 {
					span = i
				}
				if run.n == 0 {
					run.off = off + int64(i)
				}
				run.n += int64(len(blk))
			}
			if span >= 0 && onData != nil {
				if err := onData(b[span:]); err != nil {
					return err
				}
			}
			off += int64(len(b))
			if onPos != nil {
				onPos(off)
			}
		}
	}
	if run.n > 0 {
		return flush()
	}
	return onEntry(entry{off: s.size})
}

// extent returns where the next data the filesystem knows of begins at or
// after off, and where the hole after it begins, both on the 512-byte grid
// (data rounded down, hole up) and at most size; data == size when none is
// left.
func (s *scanner) extent(off int64) (data, hole int64) {
	if s.noSeek {
		return off, s.size
	}
	d, err := s.f.Seek(off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return s.size, s.size
	}
	if err != nil {
		// Not every file and filesystem can answer; reading tells the
		// same by content, and any real I/O error shows there.
		s.noSeek = true
		return off, s.size
	}
	d = max(d&^(blockSize-1), off)
	if d >= s.size {
		return s.size, s.size
	}
	h, err := s.f.Seek(d, unix.SEEK_HOLE)
	if err != nil || h <= d || h >= s.size {
		// (Directories report holes near the largest offset: rounding
		// those up would overflow.)
		return d, s.size
	}
	return d, min((h+blockSize-1)&^(blockSize-1), s.size)
}

func (s *scanner) readAt(b []byte, off int64) error {
	n, err := s.f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == io.EOF {
		return fmt.Errorf("gcetar: %s ended at %d bytes, before the %d to archive: was it truncated while being read?", s.f.Name(), off+int64(n), s.size)
	}
	return fmt.Errorf("gcetar: reading %s at offset %d: %w", s.f.Name(), off+int64(n), err)
}
