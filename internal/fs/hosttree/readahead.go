package hosttree

import (
	"context"
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
)

// openedTarget is a Target that takes a regular file the reader goroutine
// has opened already and, when small, read: data is then its whole
// content, else nil and f is read from its start.
type openedTarget interface {
	OpenedFile(h ext4.Header, src string, f *os.File, data []byte) (ino uint32, err error)
}

// Read-ahead bounds: how far the reader may run ahead of the writer. The
// two cores then each do a part (stat, open and read on one; checksums,
// copies and writes on the other) in bounded memory.
const (
	aheadEntries = 256      // entries walked but not yet written
	aheadOpen    = 64       // of them, large files held open
	smallFile    = 64 << 10 // files smaller than this are read whole ahead
)

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallFile); return &b }}

type readAhead struct {
	ctx  context.Context
	out  chan *entry
	done chan struct{}
	open chan struct{} // a token per large file held open
	seen map[devIno]bool
	wg   sync.WaitGroup
}

func newReadAhead(ctx context.Context, seen map[devIno]bool) *readAhead {
	r := &readAhead{
		ctx:  ctx,
		out:  make(chan *entry, aheadEntries),
		done: make(chan struct{}),
		open: make(chan struct{}, aheadOpen),
		seen: seen,
	}
	r.wg.Add(1) // run's
	return r
}

// run walks src and sends every entry, or the error that stopped it, in
// walk order; it ends early when stop is called.
func (r *readAhead) run(src, dst string) {
	defer r.wg.Done()
	defer close(r.out)
	err := walk(r.ctx, src, dst, func(e *entry) error {
		if e.fi.Mode().IsRegular() {
			r.prepare(e)
		}
		select {
		case r.out <- e:
			return nil
		case <-r.done:
			r.release(e)
			return errStopped
		}
	})
	if err != nil && err != errStopped {
		select {
		case r.out <- &entry{err: err}:
		case <-r.done:
		}
	}
}

type stopped struct{}

func (stopped) Error() string { return "stopped" }

var errStopped error = stopped{}

// prepare opens a regular file (a hard link to an inode opened before is
// left to the writer's link) and reads it whole when small; a large one
// gets the kernel reading it ahead. Errors travel with the entry.
func (r *readAhead) prepare(e *entry) {
	st := e.fi.Sys().(*syscall.Stat_t)
	if st.Nlink > 1 {
		key := devIno{uint64(st.Dev), uint64(st.Ino)}
		if r.seen[key] {
			return
		}
		r.seen[key] = true
	}
	size := e.fi.Size()
	large := size >= smallFile
	if large {
		select {
		case r.open <- struct{}{}:
		case <-r.done:
			return
		}
	}
	f, err := os.Open(e.p)
	if err != nil {
		e.err = err
		if large {
			<-r.open
		}
		return
	}
	if large {
		_ = unix.Fadvise(int(f.Fd()), 0, size, unix.FADV_WILLNEED)
		e.f = f
		return
	}
	defer f.Close()
	buf := smallBufs.Get().(*[]byte)
	// One byte more than the size says: a file that grew shows as such.
	n, err := io.ReadFull(f, (*buf)[:size+1])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		smallBufs.Put(buf)
		e.err = err
		return
	}
	e.buf, e.data = buf, (*buf)[:n]
}

// release gives back what an entry holds once the writer is done with it.
func (r *readAhead) release(e *entry) {
	if e.f != nil {
		e.f.Close()
		e.f = nil
		<-r.open
	}
	if e.buf != nil {
		smallBufs.Put(e.buf)
		e.buf, e.data = nil, nil
	}
}

// stop ends the walk and releases what it had read ahead.
func (r *readAhead) stop() {
	close(r.done)
	for e := range r.out {
		r.release(e)
	}
	r.wg.Wait()
}
