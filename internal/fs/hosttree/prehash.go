package hosttree

import (
	"context"
	"crypto/sha256"
	"fmt"
	"runtime"
	"sync"
)

// prehasher hashes, on other cores, the host files the first walk will
// hash, in the order the walk meets them: a second walk of the host store
// paths queues each candidate, and workers hash them ahead of the decider,
// which takes the keys from the queue in order. The decisions stay the
// walk's alone (the keys are the same whoever computes them); only the
// waiting moves. At most prehashQueue files are queued, so memory is
// bounded whatever the closure. NAR store paths are hashed by the walk
// itself, which reads their content as it goes.
type prehasher struct {
	queue  chan *pending // in walk order; closed when the queuing walk ends
	cancel context.CancelFunc
	wg     sync.WaitGroup
	err    error // the queuing walk's error, set before the queue is closed
}

// pending is one file's key, ready when done is closed.
type pending struct {
	e    entry
	key  contentKey
	err  error
	done chan struct{}
}

const prehashQueue = 256

// prehash starts hashing the candidates of c's host store paths: the
// regular non-empty files whose (size, executable bit) group in groups has
// two or more files.
func (c *Closure) prehash(ctx context.Context, dir string, groups map[sizeKey]uint32) *prehasher {
	ctx, cancel := context.WithCancel(ctx)
	p := &prehasher{queue: make(chan *pending, prehashQueue), cancel: cancel}
	work := make(chan *pending)
	workers := max(1, min(runtime.GOMAXPROCS(0), 4))
	for range workers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			d := &decider{h: sha256.New(), buf: make([]byte, 64<<10)}
			for f := range work {
				f.key, f.err = d.key(&f.e)
				close(f.done)
			}
		}()
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(work)
		defer close(p.queue)
		// The walk closes the queue only after setting err: key reads it
		// after the close.
		p.err = c.hostFiles(ctx, dir, func(e *entry) error {
			if e.h.Size == 0 || groups[keyOf(e.h.Size, e.exec)] < 2 {
				return nil
			}
			f := &pending{e: *e, done: make(chan struct{})}
			select {
			case p.queue <- f:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case work <- f:
			case <-ctx.Done():
				// Queued but no worker will hash it: key may already be
				// waiting for it (the decider does not look at ctx
				// between the files of one directory).
				f.err = ctx.Err()
				close(f.done)
				return ctx.Err()
			}
			return nil
		})
	}()
	return p
}

// key returns the key of e, the next candidate from a host store path.
func (p *prehasher) key(e *entry) (contentKey, error) {
	f, ok := <-p.queue
	if !ok {
		if p.err != nil {
			return contentKey{}, p.err
		}
		return contentKey{}, fmt.Errorf("the closure changed while it was measured: %s appeared", e.host)
	}
	if f.e.host != e.host || f.e.h != e.h {
		return contentKey{}, fmt.Errorf("the closure changed while it was measured: %s, then %s", f.e.host, e.host)
	}
	<-f.done
	return f.key, f.err
}

// stop ends the queuing walk and the workers and waits for them.
func (p *prehasher) stop() {
	p.cancel() // the walk's sends give up; whatever is queued is dropped
	p.wg.Wait()
}
