package ext4

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// Limits of the file reader: a path is looked up through at most
// maxPathDepth directories of at most maxDirBytes each, and a file read is
// at most MaxFileSize, so a lookup reads at most 1 GiB and keeps one block.
const (
	maxPathDepth = 32
	maxDirBytes  = 32 << 20 // /nix/store of a large closure is a few MiB
	// MaxFileSize is the largest file ReadFile returns (the files edited
	// in place are account files and the Nix database).
	MaxFileSize = 256 << 20
)

const (
	flagEncrypt = 0x800
	flagInline  = 0x10000000
)

// ErrNotFound is Lookup's answer for a path that is not there.
var ErrNotFound = errors.New("ext4: no such file")

// FS reads files of an ext4 filesystem someone else wrote, through its own
// bounded, checksum-verifying reader, and rewrites a file's bytes in place
// over the file's own data blocks.
type FS struct {
	v        *volume
	filetype bool
}

// Open validates the filesystem at f[off:], which owns size bytes there
// (its partition), as Normalize does: superblock, descriptors, geometry,
// the journal's blocks.
func Open(f *os.File, off, size int64) (*FS, error) {
	v, err := loadVolume(f, off, size)
	if err != nil {
		return nil, err
	}
	if _, err := v.loadJournal(); err != nil {
		return nil, err
	}
	return &FS{v: v, filetype: binary.LittleEndian.Uint32(v.sb[0x60:])&ext4spec.IncompatFiletype != 0}, nil
}

// File is a regular file Lookup found: where its bytes are.
type File struct {
	Path  string
	Ino   uint32
	Size  int64
	exts  []extent // data mappings in logical order
	nodes []uint64 // its extent-tree blocks
}

// inode reads and verifies inode ino and returns it with its mappings and
// tree blocks.
func (fs *FS) inode(ino uint32) ([]byte, []extent, []uint64, error) {
	le := binary.LittleEndian
	b := make([]byte, ext4spec.InodeSize)
	if err := fs.v.readInode(ino, b); err != nil {
		return nil, nil, nil, err
	}
	if !fs.v.inodeCsumOK(ino, b) {
		return nil, nil, nil, fmt.Errorf("ext4: inode %d checksum mismatch", ino)
	}
	if le.Uint16(b[0x1A:]) == 0 || le.Uint32(b[0x14:]) != 0 {
		return nil, nil, nil, fmt.Errorf("ext4: inode %d is deleted", ino)
	}
	if fl := le.Uint32(b[0x20:]); fl&(flagInline|flagEncrypt) != 0 {
		return nil, nil, nil, fmt.Errorf("ext4: inode %d: inline or encrypted (flags %#x)", ino, fl)
	}
	seen := map[uint64]bool{}
	exts, err := fs.v.fileExtents(ino, b, seen)
	if err != nil {
		return nil, nil, nil, err
	}
	nodes := make([]uint64, 0, len(seen))
	for blk := range seen {
		nodes = append(nodes, blk)
	}
	return b, exts, nodes, nil
}

func inodeSize(b []byte) uint64 {
	return uint64(binary.LittleEndian.Uint32(b[0x04:])) | uint64(binary.LittleEndian.Uint32(b[0x6C:]))<<32
}

// Lookup finds the regular file at an absolute path, through directories
// only (a symlink on the way is refused, not followed).
func (fs *FS) Lookup(path string) (*File, error) {
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if !strings.HasPrefix(path, "/") || len(parts) > maxPathDepth {
		return nil, fmt.Errorf("ext4: lookup %q: not an absolute path of at most %d names", path, maxPathDepth)
	}
	ino := uint32(2) // the root directory
	for _, name := range parts {
		if name == "" || name == "." || name == ".." || len(name) > 255 {
			return nil, fmt.Errorf("ext4: lookup %q: bad name %q", path, name)
		}
		next, err := fs.dirLookup(ino, name)
		if err != nil {
			return nil, fmt.Errorf("ext4: lookup %q: %w", path, err)
		}
		ino = next
	}
	b, exts, nodes, err := fs.inode(ino)
	if err != nil {
		return nil, fmt.Errorf("ext4: lookup %q: %w", path, err)
	}
	if binary.LittleEndian.Uint16(b[0x00:])&ext4spec.ModeTypeMask != ext4spec.ModeRegular {
		return nil, fmt.Errorf("ext4: %s is not a regular file", path)
	}
	size := inodeSize(b)
	if size > MaxFileSize {
		return nil, fmt.Errorf("ext4: %s is %d bytes (at most %d)", path, size, MaxFileSize)
	}
	return &File{Path: path, Ino: ino, Size: int64(size), exts: exts, nodes: nodes}, nil
}

// dirLookup scans every block of directory dir for name: linearly, which
// also covers htree directories (their index blocks hold no names). A name
// listed twice is refused.
func (fs *FS) dirLookup(dir uint32, name string) (uint32, error) {
	le := binary.LittleEndian
	b, exts, _, err := fs.inode(dir)
	if err != nil {
		return 0, err
	}
	if le.Uint16(b[0x00:])&ext4spec.ModeTypeMask != ext4spec.ModeDir {
		return 0, fmt.Errorf("inode %d is not a directory", dir)
	}
	size := inodeSize(b)
	if size > maxDirBytes || size%ext4spec.BlockSize != 0 {
		return 0, fmt.Errorf("directory %d is %d bytes (at most %d, whole blocks)", dir, size, maxDirBytes)
	}
	seed := fs.v.seedFor(dir, le.Uint32(b[0x64:]))
	indexed := le.Uint32(b[0x20:])&ext4spec.FlagIndex != 0
	blk := make([]byte, ext4spec.BlockSize)
	var found uint32
	want := []byte(name)
	for _, e := range exts {
		for i := uint64(0); i < uint64(e.Len) && (uint64(e.Lblk)+i)*ext4spec.BlockSize < size; i++ {
			if e.Unwritten {
				return 0, fmt.Errorf("directory %d has an unwritten extent", dir)
			}
			if err := fs.v.readBlock(blk, e.Pblk+i); err != nil {
				return 0, err
			}
			lblk := uint64(e.Lblk) + i
			db, err := parseDirBlock(blk, indexed && lblk == 0, indexed)
			if err == nil && db.sum(seed, blk) != db.stored(blk) {
				err = errors.New("checksum mismatch")
			}
			if err != nil {
				return 0, fmt.Errorf("directory %d block %d: %w", dir, lblk, err)
			}
			if db.dx {
				continue // "." and "..", then the index: no names
			}
			err = dirEntries(blk, fs.filetype, func(ino uint32, n []byte) error {
				if !bytes.Equal(n, want) {
					return nil
				}
				if found != 0 {
					return fmt.Errorf("directory %d lists %q twice", dir, name)
				}
				found = ino
				return nil
			})
			if err != nil {
				return 0, fmt.Errorf("directory %d block %d: %w", dir, lblk, err)
			}
		}
	}
	if found == 0 {
		return 0, ErrNotFound
	}
	return found, nil
}

// dataBlocks is the number of blocks fl's bytes need.
func (fl *File) dataBlocks() uint64 {
	return (uint64(fl.Size) + ext4spec.BlockSize - 1) / ext4spec.BlockSize
}

// ReadFile returns fl's bytes; holes and unwritten extents read as zeros.
func (fs *FS) ReadFile(fl *File) ([]byte, error) {
	out := make([]byte, fl.Size)
	err := fl.eachRun(func(e extent, from, to int64) error {
		if e.Unwritten {
			return nil
		}
		return fs.v.readAt(out[from:to], int64(e.Pblk)*ext4spec.BlockSize)
	})
	return out, err
}

// eachRun calls fn for each mapping with the byte range [from, to) of the
// file it holds, clipped to the file's size.
func (fl *File) eachRun(fn func(e extent, from, to int64) error) error {
	for _, e := range fl.exts {
		from := int64(e.Lblk) * ext4spec.BlockSize
		if from >= fl.Size {
			break // mappings are in logical order: the rest lie past the end
		}
		to := min(from+int64(e.Len)*ext4spec.BlockSize, fl.Size)
		if err := fn(e, from, to); err != nil {
			return err
		}
	}
	return nil
}

// CheckRewrite says whether data can replace fl's bytes in place: it must
// be as long, and the file dense (every block mapped and initialised), its
// data blocks distinct from each other, from its own extent tree and from
// the filesystem's metadata.
func (fs *FS) CheckRewrite(fl *File, data []byte) error {
	if int64(len(data)) != fl.Size {
		return fmt.Errorf("ext4: %s: new content is %d bytes, the file %d", fl.Path, len(data), fl.Size)
	}
	covered := uint64(0)
	var runs [][2]uint64 // physical [start, end) blocks
	err := fl.eachRun(func(e extent, from, to int64) error {
		if e.Unwritten || uint64(e.Lblk) != covered {
			return fmt.Errorf("ext4: %s has a hole or an unwritten extent at block %d", fl.Path, covered)
		}
		n := uint64(to-from+ext4spec.BlockSize-1) / ext4spec.BlockSize
		covered += n
		runs = append(runs, [2]uint64{e.Pblk, e.Pblk + n})
		return nil
	})
	if err != nil {
		return err
	}
	if covered != fl.dataBlocks() {
		return fmt.Errorf("ext4: %s maps %d of its %d blocks (a sparse file)", fl.Path, covered, fl.dataBlocks())
	}
	for _, n := range fl.nodes {
		runs = append(runs, [2]uint64{n, n + 1})
	}
	for _, r := range runs {
		if fs.v.isMeta(r[0], r[1]-r[0]) {
			return fmt.Errorf("ext4: %s: block %d is filesystem metadata", fl.Path, r[0])
		}
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i][0] < runs[j][0] })
	for i := 1; i < len(runs); i++ {
		if runs[i][0] < runs[i-1][1] {
			return fmt.Errorf("ext4: %s: data block %d is also the file's own or the filesystem's metadata", fl.Path, runs[i][0])
		}
	}
	return nil
}

// Rewrite writes data over fl's bytes in place, after CheckRewrite; each
// write lies inside one of the file's data runs.
func (fs *FS) Rewrite(fl *File, data []byte) error {
	if err := fs.CheckRewrite(fl, data); err != nil {
		return err
	}
	return fl.eachRun(func(e extent, from, to int64) error {
		return fs.v.writeAt(data[from:to], int64(e.Pblk)*ext4spec.BlockSize)
	})
}

// Disjoint refuses files whose data blocks overlap, so rewriting one can
// never change another.
func Disjoint(files ...*File) error {
	type run struct {
		start, end uint64
		path       string
	}
	var runs []run
	for _, fl := range files {
		_ = fl.eachRun(func(e extent, from, to int64) error {
			runs = append(runs, run{e.Pblk, e.Pblk + uint64(to-from+ext4spec.BlockSize-1)/ext4spec.BlockSize, fl.Path})
			return nil
		})
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].start < runs[j].start })
	for i := 1; i < len(runs); i++ {
		if runs[i].start < runs[i-1].end {
			return fmt.Errorf("ext4: %s and %s share block %d", runs[i-1].path, runs[i].path, runs[i].start)
		}
	}
	return nil
}
