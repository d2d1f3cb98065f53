package hosttree

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"path"

	"golang.org/x/sys/unix"
)

// StorePath is one store path of a closure and where its entries come from.
type StorePath struct {
	// Path is the store path, /nix/store/<hash>-<name>; the image names it by
	// its base name. Without NAR the entries are read from the host at Path.
	Path string
	// NAR, when set, opens the path's NAR (nartree parses it; checking it
	// against its narinfo is the opener's business: a verifying reader's
	// final Read fails on a mismatch, and every walk reads the NAR to its
	// end). It is called once per walk and the stream closed after it.
	NAR func() (io.ReadCloser, error)
}

// HostPaths lists store paths read from the host store.
func HostPaths(paths ...string) []StorePath {
	sps := make([]StorePath, len(paths))
	for i, p := range paths {
		sps[i] = StorePath{Path: p}
	}
	return sps
}

// Closure walks the store paths of a closure into a Target, each under
// dir/<base name>, with one hard-link rule that depends on the closure alone,
// not on how the host store happens to share inodes nor on whether the
// paths come from NARs (which have no hard links):
//
// Two regular files are the same file when they are non-empty and have the
// same content and the same header (mode, owner, time; in a canonical store
// that is the same executable bit). The first in walk order is written,
// every later one is a hard link to its inode. Directories, symlinks and
// empty files are never linked.
//
// Identity is the sha256 of header and content, truncated to 128 bits. Only
// files whose (size, executable bit) another file of the closure shares are
// hashed: a pre-pass counts them (lstat, or a NAR read without its content).
// Host files are hashed ahead of the walk on other cores (prehash.go).
//
// The first Walk (the measuring one, into a Sizer) decides, hashing what it
// must; every later Walk makes the same decisions from a record of the links
// (8 bytes per link) without hashing again, and fails if it does not see as
// many regular files as the first walk. The first walk reads a NAR file's
// content only to hash it, before the Target sees the file, so a Target that
// needs contents (a Writer) can only replay a walk over NARs, never make the
// first one.
type Closure struct {
	opts  Options
	paths []StorePath

	decided bool
	files   uint32 // regular files the first walk saw
	links   []link // the first walk's links, by increasing ordinal
}

// link says that the regular file with this ordinal (in walk order) is a
// hard link to inode ino.
type link struct{ ord, ino uint32 }

// NewClosure returns the walker for paths, mapping metadata with opts
// (Owner sets the store's owner; a NAR's entries have the store's canonical
// modes and time, 1, which MaxMtime clamps like the host's).
func NewClosure(paths []StorePath, opts Options) *Closure {
	return &Closure{opts: opts, paths: paths}
}

// Links is the number of hard links the first walk decided on.
func (c *Closure) Links() int { return len(c.links) }

// Walk adds every store path under dir ("" for the root), whose parent
// directories exist, and returns what it added.
func (c *Closure) Walk(ctx context.Context, t Target, dir string) (Stats, error) {
	if c.decided {
		return c.replay(ctx, t, dir)
	}
	c.links = nil
	st, err := c.decide(ctx, t, dir)
	if err != nil {
		c.links = nil
		return st, err
	}
	c.links = append([]link(nil), c.links...) // no spare capacity kept for the later walks
	c.decided = true
	return st, nil
}

// maxNames is ext4's limit of names for one inode (its linkMax): a twin
// beyond it becomes a new first copy. A variable for the tests.
var maxNames uint32 = 65000

// sizeKey is a (size, executable bit) pair: size<<1 | exec.
type sizeKey uint64

func keyOf(size int64, exec bool) sizeKey {
	k := sizeKey(size) << 1
	if exec {
		k |= 1
	}
	return k
}

// contentKey is the sha256 of a file's header and content, truncated.
type contentKey [16]byte

func (c *Closure) storeName(dir string, sp StorePath) string {
	return path.Join(dir, path.Base(sp.Path))
}

// twins counts, per (size, executable bit) group of non-empty regular files,
// the files in it, and keeps the groups of two or more: the only files that
// can have a twin.
func (c *Closure) twins(ctx context.Context) (groups map[sizeKey]uint32, candidates uint64, err error) {
	hist := map[sizeKey]uint32{}
	for _, sp := range c.paths {
		err := c.opts.fileSizes(ctx, sp, func(size int64, exec bool) {
			if k := keyOf(size, exec); size > 0 && hist[k] < 1<<32-1 {
				hist[k]++
			}
		})
		if err != nil {
			return nil, 0, err
		}
	}
	n := 0
	for _, v := range hist {
		if v > 1 {
			n++
		}
	}
	groups = make(map[sizeKey]uint32, n)
	for k, v := range hist {
		if v > 1 {
			groups[k] = v
			candidates += uint64(v)
		}
	}
	return groups, candidates, nil
}

// decider is the state of the first walk; all of it but the links is
// garbage once the walk ends.
type decider struct {
	seen  *keyTable             // first copy's inode by content
	names map[contentKey]uint32 // names of inodes in groups that could reach maxNames
	h     hash.Hash
	buf   []byte
	sum   []byte
}

func (c *Closure) decide(ctx context.Context, t Target, dir string) (Stats, error) {
	var st Stats
	groups, candidates, err := c.twins(ctx)
	if err != nil {
		return st, err
	}
	seen, err := newKeyTable(candidates)
	if err != nil {
		return st, err
	}
	defer seen.Free()
	pre := c.prehash(ctx, dir, groups)
	defer pre.stop()
	d := &decider{seen: seen, h: sha256.New(), buf: make([]byte, 64<<10)}
	var ord uint32
	for _, sp := range c.paths {
		err := c.opts.walkEntries(ctx, sp, c.storeName(dir, sp), func(e *entry) error {
			if e.kind != kindFile {
				return add(t, e, &st)
			}
			if ord == 1<<32-1 {
				return errors.New("more than 2^32-1 regular files")
			}
			o := ord
			ord++
			n := groups[keyOf(e.h.Size, e.exec)]
			if e.h.Size == 0 || n < 2 {
				return add(t, e, &st)
			}
			var key contentKey
			if e.content != nil {
				key, err = d.key(e)
			} else {
				key, err = pre.key(e)
			}
			if err != nil {
				return wrap(e.h.Name, err)
			}
			if e.content != nil {
				e.content = consumed{} // hashed: a Sizer needs no content
			}
			if ino := d.seen.get(key); ino != 0 && d.room(key, n) {
				c.links = append(c.links, link{o, ino})
				st.HardLinks++
				return wrap(e.h.Name, t.Link(e.h.Name, ino))
			}
			ino, err := file(t, e, &st)
			if err != nil {
				return err
			}
			if err := d.seen.put(key, ino); err != nil {
				return wrap(e.h.Name, err)
			}
			if n >= maxNames {
				if d.names == nil {
					d.names = map[contentKey]uint32{}
				}
				d.names[key] = 1
			}
			return nil
		})
		if err != nil {
			return st, err
		}
	}
	c.files = ord
	return st, nil
}

// room reports whether the first copy of key takes one more name, counting
// it; only groups as large as ext4's limit are counted.
func (d *decider) room(key contentKey, group uint32) bool {
	if group < maxNames {
		return true
	}
	if d.names[key] >= maxNames {
		return false
	}
	d.names[key]++
	return true
}

// key hashes e's header and content.
func (d *decider) key(e *entry) (contentKey, error) {
	d.h.Reset()
	var meta [28]byte
	binary.LittleEndian.PutUint64(meta[0:], uint64(e.h.Size))
	binary.LittleEndian.PutUint32(meta[8:], uint32(e.h.Mode))
	binary.LittleEndian.PutUint32(meta[12:], e.h.Uid)
	binary.LittleEndian.PutUint32(meta[16:], e.h.Gid)
	binary.LittleEndian.PutUint64(meta[20:], uint64(e.h.Mtime))
	d.h.Write(meta[:])
	var n int64
	var err error
	if e.content != nil {
		n, err = io.CopyBuffer(d.h, io.LimitReader(e.content, e.h.Size+1), d.buf)
	} else {
		n, err = d.hashHost(e.host, e.h.Size)
	}
	if err != nil {
		return contentKey{}, err
	}
	if n != e.h.Size {
		return contentKey{}, fmt.Errorf("read %d bytes, expected %d: changed while it was read", n, e.h.Size)
	}
	d.sum = d.h.Sum(d.sum[:0])
	return contentKey(d.sum[:16]), nil
}

// hashHost hashes the first size bytes of a host file (and says whether
// there were fewer). Plain system calls: the walk hashes up to every file of
// the closure, and an os.File costs an epoll registration attempt, a
// finalizer and a read to see the end, which the lstat size makes needless.
func (d *decider) hashHost(name string, size int64) (int64, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	var n int64
	for n < size {
		m, err := unix.Read(fd, d.buf[:min(int64(len(d.buf)), size-n)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "read", Path: name, Err: err}
		}
		if m == 0 {
			break
		}
		d.h.Write(d.buf[:m])
		n += int64(m)
	}
	return n, nil
}

func (c *Closure) replay(ctx context.Context, t Target, dir string) (Stats, error) {
	var st Stats
	ra := c.readahead(ctx, dir)
	defer ra.stop()
	var ord uint32
	links := c.links
	changed := func() error {
		return fmt.Errorf("the closure changed since it was measured: %d regular files then, %d or more now", c.files, ord+1)
	}
	for _, sp := range c.paths {
		err := c.opts.walkEntries(ctx, sp, c.storeName(dir, sp), func(e *entry) error {
			if e.kind != kindFile {
				return add(t, e, &st)
			}
			if ord >= c.files {
				return changed()
			}
			if e.content == nil {
				defer ra.wrote()
			}
			o := ord
			ord++
			if len(links) > 0 && links[0].ord == o {
				ino := links[0].ino
				links = links[1:]
				st.HardLinks++
				return wrap(e.h.Name, t.Link(e.h.Name, ino))
			}
			_, err := file(t, e, &st)
			return err
		})
		if err != nil {
			return st, err
		}
	}
	if ord != c.files || len(links) != 0 {
		return st, fmt.Errorf("the closure changed since it was measured: %d regular files then, %d now", c.files, ord)
	}
	return st, nil
}

// hostFiles calls fn for each regular file of the host store paths (NAR
// paths are left out), in walk order: the second walks that run ahead of
// the deciding walk (prehash.go) and of the writing walk (readahead.go).
func (c *Closure) hostFiles(ctx context.Context, dir string, fn func(*entry) error) error {
	for _, sp := range c.paths {
		if sp.NAR != nil {
			continue
		}
		err := c.opts.hostEntries(ctx, sp.Path, c.storeName(dir, sp), func(e *entry) error {
			if e.kind != kindFile {
				return nil
			}
			return fn(e)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// add passes a directory, symlink or file on to t.
func add(t Target, e *entry, st *Stats) error {
	switch e.kind {
	case kindDir:
		st.Dirs++
		return wrap(e.h.Name, t.Mkdir(e.h))
	case kindSymlink:
		st.Symlinks++
		return wrap(e.h.Name, t.Symlink(e.h, e.target))
	}
	_, err := file(t, e, st)
	return err
}

func file(t Target, e *entry, st *Stats) (ino uint32, err error) {
	if e.content != nil {
		ino, err = t.FileFrom(e.h, e.content)
	} else {
		ino, err = t.File(e.h, e.host)
	}
	if err != nil {
		return 0, wrap(e.h.Name, err)
	}
	st.Files++
	st.Bytes += e.h.Size
	return ino, nil
}

// consumed stands for a NAR file's content that the first walk read to hash
// it.
type consumed struct{}

var errConsumed = errors.New("the NAR file's content was read to measure it: write it in a later walk")

func (consumed) Read([]byte) (int, error) { return 0, errConsumed }
