package binarycache

import (
	"crypto/sha256"
	"hash"
	"io"
	"sync"
)

// bgHash is a sha256 computed on another goroutine, which also writes the
// bytes on to a sink if there is one: Write copies them into one of a few
// fixed chunks and hands them over, so hashing and writing a NAR run on a
// second core beside its decompression (which took about half of a
// single-core spool of a large zstd NAR). Memory: hashChunks × hashChunk.
type bgHash struct {
	full chan []byte
	free chan []byte
	done chan struct{}
	once sync.Once
	h    hash.Hash
	sink io.Writer
	err  error // the sink's first error; read after done
}

const (
	hashChunk  = 128 << 10
	hashChunks = 8
)

func newBGHash(sink io.Writer) *bgHash {
	b := &bgHash{full: make(chan []byte, hashChunks), free: make(chan []byte, hashChunks), done: make(chan struct{}), h: sha256.New(), sink: sink}
	for range hashChunks {
		b.free <- make([]byte, hashChunk)
	}
	go func() {
		defer close(b.done)
		for c := range b.full {
			b.h.Write(c)
			if b.sink != nil && b.err == nil {
				_, b.err = b.sink.Write(c)
			}
			b.free <- c[:cap(c)]
		}
	}()
	return b
}

func (b *bgHash) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		c := <-b.free
		m := copy(c, p)
		b.full <- c[:m]
		p = p[m:]
	}
	return n, nil
}

// Sum waits for every byte written so far to be hashed (and written to the
// sink) and returns the digest and the sink's error; it takes no more writes.
func (b *bgHash) Sum() ([]byte, error) {
	b.stop()
	return b.h.Sum(nil), b.err
}

// stop ends the goroutine (idempotent).
func (b *bgHash) stop() {
	b.once.Do(func() { close(b.full) })
	<-b.done
}
