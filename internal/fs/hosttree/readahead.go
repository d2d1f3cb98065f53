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
	aheadBytes   = 2 << 20  // of them, small files' bytes held
	smallFile    = 64 << 10 // files smaller than this are read whole ahead
)

type readAhead struct {
	ctx  context.Context
	out  chan *entry
	done chan struct{}
	open chan struct{} // a token per large file held open
	ring *ring         // small files' contents, freed in walk order
	seen map[devIno]bool
	wg   sync.WaitGroup
}

func newReadAhead(ctx context.Context, seen map[devIno]bool) *readAhead {
	r := &readAhead{
		ctx:  ctx,
		out:  make(chan *entry, aheadEntries),
		done: make(chan struct{}),
		open: make(chan struct{}, aheadOpen),
		ring: newRing(aheadBytes),
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
	// One byte more than the size says: a file that grew shows as such.
	buf, end, ok := r.ring.alloc(int(size)+1, r.done)
	if !ok {
		return
	}
	e.ringEnd = end
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		e.err = err
		return
	}
	e.data = buf[:n:n]
}

// release gives back what an entry holds once the writer is done with it.
func (r *readAhead) release(e *entry) {
	if e.f != nil {
		e.f.Close()
		e.f = nil
		<-r.open
	}
	if e.ringEnd != 0 {
		r.ring.free(e.ringEnd)
		e.ringEnd, e.data = 0, nil
	}
}

// stop ends the walk and releases what it had read ahead.
func (r *readAhead) stop() {
	close(r.done)
	r.ring.wake()
	for e := range r.out {
		r.release(e)
	}
	r.wg.Wait()
}

// ring holds small files' contents between the reader and the writer in
// one fixed buffer: the reader takes space at the head, the writer frees
// it at the tail in the same (walk) order, so nothing is allocated a file.
type ring struct {
	buf        []byte
	mu         sync.Mutex
	cond       *sync.Cond
	head, tail int64 // positions since the start; head-tail bytes are held
}

func newRing(size int) *ring {
	r := &ring{buf: make([]byte, size)}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// alloc returns n contiguous bytes (n <= len(buf)) and the position that
// frees them, waiting for the writer to free space; false once done is
// closed.
func (r *ring) alloc(n int, done <-chan struct{}) ([]byte, int64, bool) {
	size := int64(len(r.buf))
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		select {
		case <-done:
			return nil, 0, false
		default:
		}
		pos := r.head
		if off := pos % size; off+int64(n) > size {
			pos += size - off // no room before the end: start over at 0
		}
		if pos+int64(n)-r.tail <= size {
			r.head = pos + int64(n)
			off := pos % size
			return r.buf[off : off+int64(n)], r.head, true
		}
		r.cond.Wait()
	}
}

// free releases everything up to end.
func (r *ring) free(end int64) {
	r.mu.Lock()
	r.tail = max(r.tail, end)
	r.mu.Unlock()
	r.cond.Broadcast()
}

// wake lets a waiting alloc see that the reader was stopped.
func (r *ring) wake() {
	r.mu.Lock()
	r.mu.Unlock() //nolint:staticcheck // the lock orders this after alloc's check
	r.cond.Broadcast()
}
