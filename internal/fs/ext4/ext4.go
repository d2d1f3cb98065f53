// Package ext4 writes a deterministic ext4 filesystem image in one streaming
// pass, the way archive/tar writes an archive: entries arrive parent first,
// depth first, and each directory is written out once its subtree is done.
//
// Memory grows only with the directories currently open (their entry names)
// and never with the total number of files or bytes. Data blocks are handed
// out by a cursor that only moves forward; zero blocks become holes, so the
// image stays sparse.
//
// The image has 4 KiB blocks and the features extents, flex_bg, 64bit,
// sparse_super, huge_file, dir_nlink, extra_isize, metadata_csum, filetype,
// dir_index, has_journal, ext_attr and large_file. Directories larger than a
// block are htree indexed (half_md4, up to two levels).
//
// Output is a pure function of Options and the sequence of calls: the same
// calls give a byte-identical image. Each directory's entries are sorted by
// the writer, but inode numbers and block placement follow the call order,
// so feed a sorted walk for reproducible images. A Writer is not safe for
// concurrent use.
package ext4

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// Options describe the filesystem to create.
type Options struct {
	Size          int64    // filesystem size in bytes (rounded down to 4096)
	Label         string   // volume label, at most 16 bytes
	UUID          [16]byte // filesystem UUID
	HashSeed      [16]byte // htree hash seed (s_hash_seed)
	Time          int64    // unix seconds for superblock times, root dir, lost+found, journal
	Inodes        uint32   // total inode count; 0 = one per 16 KiB
	JournalBlocks uint32   // 0 = mke2fs's default for the size (none below 8 MiB)
}

// Header describes one entry. Name is slash separated and relative to the
// root ("abc-foo/bin/x"). Mode carries permission bits plus fs.ModeSetuid,
// fs.ModeSetgid and fs.ModeSticky; the type is given by the method called.
type Header struct {
	Name     string
	Mode     fs.FileMode
	Uid, Gid uint32
	Mtime    int64 // atime = ctime = crtime = mtime
	Size     int64 // regular files: exact byte count that will be written
}

// Stats summarise what a Writer wrote. Dirs excludes / and lost+found;
// InodesUsed includes the 11 reserved inodes.
type Stats struct {
	Files, Dirs, Symlinks, HardLinks uint64
	Bytes                            int64  // file content bytes accepted
	BlocksUsed                       uint64 // blocks in use (metadata included), final after Close
	BlocksTotal                      uint64
	InodesUsed, InodesTotal          uint32
}

var (
	ErrWriteTooLong  = errors.New("ext4: write beyond the size in the header")
	ErrWriteTooShort = errors.New("ext4: file has fewer bytes than its header size")
	errClosed        = errors.New("ext4: writer closed")
)

const (
	rootIno = 2
	lpfIno  = 11
	dataBuf = 1 << 20
)

// Writer streams an ext4 filesystem into f[offset:offset+Size].
type Writer struct {
	f      *os.File
	off    int64
	opts   Options
	g      *geometry
	a      allocator
	fsSeed uint32
	seed   [4]uint32

	err     error
	closed  bool
	started bool // an entry has been added: SetRoot is no longer allowed

	nextIno uint32
	dirs    []uint32 // directories per group

	stack []*openDir
	cur   *File

	buf    []byte // file data staging
	scan   []byte // plainData's buffer, made on first use
	blk    []byte // one block of scratch
	dirBuf []byte
	ibuf   [ext4spec.InodeSize]byte
	win    inodeWindow

	wb writeback

	jnlBlocks [17]uint32
	lpfExts   []ext4spec.Extent
	stats     Stats
}

// NewWriter starts a filesystem at f[offset:offset+opts.Size]. The caller
// has already sized f; the range must read back as zeros (a fresh sparse
// file), which NewWriter tries to ensure by punching a hole over it.
func NewWriter(f *os.File, offset int64, opts Options) (*Writer, error) {
	if len(opts.Label) > 16 {
		return nil, fmt.Errorf("ext4: label %q longer than 16 bytes", opts.Label)
	}
	if offset < 0 || offset%512 != 0 {
		return nil, fmt.Errorf("ext4: offset %d not a multiple of 512", offset)
	}
	g, err := newGeometry(opts.Size, opts.Inodes, opts.JournalBlocks)
	if err != nil {
		return nil, err
	}
	size := int64(g.blocks) * ext4spec.BlockSize
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() < offset+size {
		return nil, fmt.Errorf("ext4: %s is %d bytes, need %d for the filesystem at offset %d", f.Name(), st.Size(), offset+size, offset)
	}
	// Best effort: unwritten metadata (free inodes, journal body) relies on
	// the range being zero.
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, offset, size); err != nil &&
		!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.ENODEV) {
		return nil, fmt.Errorf("ext4: punching hole: %w", err)
	}
	w := &Writer{
		f:       f,
		wb:      writeback{fd: int(f.Fd())},
		off:     offset,
		opts:    opts,
		g:       g,
		fsSeed:  ext4spec.ChecksumSeed(opts.UUID[:]),
		seed:    hashSeedWords(opts.HashSeed),
		nextIno: firstIno + 1,
		dirs:    make([]uint32, g.groups),
		buf:     make([]byte, dataBuf),
		blk:     make([]byte, ext4spec.BlockSize),
	}
	w.a.g = g
	w.win.data = make([]byte, winInodes*ext4spec.InodeSize)
	w.stack = []*openDir{{
		ino:    rootIno,
		parent: rootIno,
		hdr:    Header{Mode: 0o755, Mtime: opts.Time},
		sorted: true,
		hasLPF: true,
	}}
	w.dirs[0] = 2 // root and lost+found
	if err := w.writeReserved(); err != nil {
		return nil, err
	}
	return w, nil
}

// writeReserved writes inode 1, lost+found and the journal.
func (w *Writer) writeReserved() error {
	// mke2fs leaves inode 1 (bad blocks) with only its times set.
	b := w.ibuf[:]
	clear(b)
	t, _ := ext4spec.EncodeTime(w.opts.Time)
	for _, o := range []int{0x08, 0x0C, 0x10} {
		putU32(b[o:], t)
	}
	ext4spec.SetInodeChecksum(b, w.fsSeed, 1)
	if err := w.writeInodeBytes(1, b); err != nil {
		return err
	}
	if err := w.writeLostFound(Header{Mode: 0o700, Mtime: w.opts.Time}); err != nil {
		return err
	}
	return w.writeJournal()
}

func (w *Writer) writeLostFound(h Header) error {
	// 4 preallocated blocks, like mke2fs, so e2fsck can reconnect files
	// without allocating.
	const n = 4
	data := make([]byte, n*ext4spec.BlockSize)
	seed := inodeSeed(w.fsSeed, lpfIno)
	for i := 0; i < n; i++ {
		b := data[i*ext4spec.BlockSize : (i+1)*ext4spec.BlockSize]
		if i == 0 {
			putDirent(b, lpfIno, 12, []byte("."), ftDir)
			putDirent(b[12:], rootIno, ext4spec.DirLeafSpace-12, []byte(".."), ftDir)
		} else {
			putDirent(b, 0, ext4spec.DirLeafSpace, nil, 0)
		}
		putDirTail(b, seed)
	}
	if err := w.writeBlocks(&w.lpfExts, 0, data, n); err != nil {
		return err
	}
	return w.rewriteLostFound(h)
}

func (w *Writer) rewriteLostFound(h Header) error {
	const n = 4
	return w.finishInode(lpfIno, w.lpfExts, &inodeInfo{
		mode:  ext4spec.ModeDir | unixMode(h.Mode),
		uid:   h.Uid,
		gid:   h.Gid,
		size:  n * ext4spec.BlockSize,
		links: 2,
		flags: ext4spec.FlagExtents,
		time:  h.Mtime,
	}, n)
}

// writeBlocks maps n logical blocks starting at lblk to newly allocated
// blocks, writing data (n blocks) there unless data is nil.
func (w *Writer) writeBlocks(exts *[]ext4spec.Extent, lblk uint64, data []byte, n uint64) error {
	for n > 0 {
		p, got, err := w.a.alloc(n)
		if err != nil {
			return err
		}
		if data != nil {
			if err := w.writeAt(data[:got*ext4spec.BlockSize], p); err != nil {
				return err
			}
			data = data[got*ext4spec.BlockSize:]
		}
		*exts = addExtent(*exts, uint32(lblk), p, got)
		lblk += got
		n -= got
	}
	return nil
}

// finishInode builds the extent tree for exts and writes the inode.
func (w *Writer) finishInode(ino uint32, exts []ext4spec.Extent, in *inodeInfo, dataBlocks uint64) error {
	ib, nodes, err := w.buildExtentTree(ino, exts)
	if err != nil {
		return err
	}
	in.iblock = ib
	in.blocks = dataBlocks + nodes
	encodeInode(w.ibuf[:], w.fsSeed, ino, in)
	return w.writeInodeBytes(ino, w.ibuf[:])
}

func (w *Writer) writeAt(b []byte, block uint64) error {
	at := w.off + int64(block)*ext4spec.BlockSize
	_, err := w.f.WriteAt(b, at)
	if err != nil {
		return fmt.Errorf("ext4: write: %w", err)
	}
	w.wb.wrote(at, int64(len(b)))
	return nil
}

func (w *Writer) allocIno() (uint32, error) {
	total := uint64(w.g.ipg) * uint64(w.g.groups)
	if uint64(w.nextIno) > total {
		return 0, fmt.Errorf("%w: out of inodes (%d in total)", ErrFull, total)
	}
	ino := w.nextIno
	w.nextIno++
	return ino, nil
}

// fail records a fatal error: the image is inconsistent from here on.
func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

func (w *Writer) usable() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errClosed
	}
	return nil
}

// Stats reports what has been written so far.
func (w *Writer) Stats() Stats {
	s := w.stats
	s.BlocksTotal = w.g.blocks
	s.BlocksUsed = w.g.blocks - w.a.free()
	s.InodesUsed = w.nextIno - 1
	s.InodesTotal = w.g.ipg * w.g.groups
	return s
}

// Close finishes all open directories and writes bitmaps, group
// descriptors and superblocks. It does not close or sync f.
func (w *Writer) Close() error {
	if err := w.usable(); err != nil {
		return err
	}
	if w.cur != nil && w.cur.written != w.cur.hdr.Size {
		return w.fail(fmt.Errorf("%w: %q has %d of %d bytes", ErrWriteTooShort, w.cur.hdr.Name, w.cur.written, w.cur.hdr.Size))
	}
	w.cur = nil
	for len(w.stack) > 0 {
		top := w.stack[len(w.stack)-1]
		w.stack = w.stack[:len(w.stack)-1]
		if err := w.finishDir(top); err != nil {
			return w.fail(err)
		}
	}
	if err := w.flushWindow(); err != nil {
		return w.fail(err)
	}
	if err := w.writeGroups(); err != nil {
		return w.fail(err)
	}
	w.closed = true
	return nil
}
