package hosttree

import (
	"context"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// readahead keeps the kernel reading the host files the writing walk is
// about to copy: a second walk of the host store paths, at most
// readaheadFiles regular files ahead of the writer, asks for each one's
// first readaheadBytes (posix_fadvise WILLNEED, which starts the reads and
// returns), so that on a cold page cache the disk works while the writer
// copies the files before. It changes nothing the writer writes, only what
// the page cache holds when it reads.
type readahead struct {
	written  atomic.Int64  // regular files of host store paths the writer has passed
	progress chan struct{} // pinged when written grows
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// ReadAhead turns the writing walk's read-ahead on; a variable for the
// bench, which times the writer with and without it on a cold page cache.
var ReadAhead = true

const (
	readaheadFiles = 256
	// readaheadBytes bounds one hint: past it, the kernel's own sequential
	// read-ahead keeps up with a large file once the writer reads it.
	readaheadBytes = 8 << 20
)

func (c *Closure) readahead(ctx context.Context, dir string) *readahead {
	ctx, cancel := context.WithCancel(ctx)
	ra := &readahead{progress: make(chan struct{}, 1), cancel: cancel}
	if !ReadAhead {
		return ra
	}
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		var n int64 // this file's index among the host regular files
		// An error ends the read-ahead; the writing walk meets it itself.
		c.hostFiles(ctx, dir, func(e *entry) error {
			i := n
			n++
			for i-ra.written.Load() >= readaheadFiles {
				select {
				case <-ra.progress:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			if i >= ra.written.Load() && e.h.Size > 0 { // else the writer is past it
				hint(e.host, min(e.h.Size, readaheadBytes))
			}
			return nil
		})
	}()
	return ra
}

// hint asks the kernel to read the first n bytes of a file in the
// background; it is only advice, so failures are ignored.
func hint(name string, n int64) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	unix.Fadvise(fd, 0, n, unix.FADV_WILLNEED)
	unix.Close(fd)
}

// wrote counts a regular file of a host store path passed (written or
// linked), letting the read-ahead one file further.
func (ra *readahead) wrote() {
	ra.written.Add(1)
	select {
	case ra.progress <- struct{}{}:
	default:
	}
}

func (ra *readahead) stop() {
	ra.cancel()
	ra.wg.Wait()
}
