package ext4

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

const (
	dxRootLimit   = (ext4spec.BlockSize - 0x20 - 8) / 8
	dxNodeLimit   = (ext4spec.BlockSize - 0x08 - 8) / 8
	dxHashHalfMD4 = 1
)

type dent struct {
	off  uint32 // into openDir.names
	nlen uint8
	ft   uint8
	ino  uint32
}

// openDir is a directory whose subtree is still arriving. Names live in one
// arena so a big directory costs a few bytes per entry beyond its names.
type openDir struct {
	path    string
	ino     uint32
	parent  uint32
	hdr     Header
	names   []byte
	ents    []dent
	subdirs uint32
	sorted  bool                // names arrived in increasing order so far
	set     map[string]struct{} // duplicate check once the order broke
	hasLPF  bool                // root: lost+found still to be added
	lpfSet  bool
}

func (d *openDir) name(e dent) []byte { return d.names[e.off : e.off+uint32(e.nlen)] }

func (d *openDir) checkNew(base, full string) error {
	if d.sorted {
		if n := len(d.ents); n == 0 || string(d.name(d.ents[n-1])) < base {
			return nil
		}
		// Out of order: from now on use a set.
		d.sorted = false
		d.set = make(map[string]struct{}, len(d.ents))
		for _, e := range d.ents {
			d.set[string(d.name(e))] = struct{}{}
		}
	}
	if _, dup := d.set[base]; dup {
		return fmt.Errorf("ext4: duplicate entry %q", full)
	}
	return nil
}

func (d *openDir) add(base string, ino uint32, ft uint8) {
	d.ents = append(d.ents, dent{off: uint32(len(d.names)), nlen: uint8(len(base)), ft: ft, ino: ino})
	d.names = append(d.names, base...)
	if d.set != nil {
		d.set[base] = struct{}{}
	}
}

func recLen(nameLen int) int { return (8 + nameLen + 3) &^ 3 }

func putDirent(b []byte, ino uint32, rec int, name []byte, ft uint8) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], ino)
	le.PutUint16(b[4:], uint16(rec))
	b[6] = uint8(len(name))
	b[7] = ft
	copy(b[8:], name)
}

// putDirTail writes the fake dirent holding a leaf block's checksum.
func putDirTail(b []byte, seed uint32) {
	t := b[ext4spec.DirLeafSpace:ext4spec.BlockSize]
	clear(t)
	binary.LittleEndian.PutUint16(t[4:], 12)
	t[7] = ext4spec.DirTailFileType
	binary.LittleEndian.PutUint32(t[8:], ext4spec.CRC32C(seed, b[:ext4spec.DirLeafSpace]))
}

// dirBlocks is the exact block count of a linear directory (1) or an upper
// bound for an htree one, from the entry count and name bytes alone, so the
// Sizer needs no names. Greedy packing leaves less than one maximal entry
// free per leaf, which gives the bound.
func dirBlocks(n uint64, recBytes uint64, maxRec uint64) uint64 {
	if 24+recBytes <= ext4spec.DirLeafSpace {
		return 1
	}
	leaves := recBytes/(ext4spec.DirLeafSpace-maxRec+1) + 1
	if leaves <= dxRootLimit {
		return 1 + leaves
	}
	return 1 + (leaves+dxNodeLimit-1)/dxNodeLimit + leaves
}

func (w *Writer) finishDir(d *openDir) error {
	if d.hasLPF {
		d.add("lost+found", lpfIno, ftDir)
		d.subdirs++
	}
	var recBytes int
	for _, e := range d.ents {
		recBytes += recLen(int(e.nlen))
	}
	var data []byte
	var indexed bool
	if 24+recBytes <= ext4spec.DirLeafSpace {
		data = w.linearDir(d)
	} else {
		var err error
		if data, err = w.htreeDir(d); err != nil {
			return err
		}
		indexed = true
	}
	n := uint64(len(data) / ext4spec.BlockSize)
	var exts []ext4spec.Extent
	if err := w.writeBlocks(&exts, 0, data, n); err != nil {
		return err
	}
	links := 2 + d.subdirs
	if links >= linkMax {
		links = 1
	}
	in := &inodeInfo{
		mode:  ext4spec.ModeDir | unixMode(d.hdr.Mode),
		uid:   d.hdr.Uid,
		gid:   d.hdr.Gid,
		size:  n * ext4spec.BlockSize,
		links: uint16(links),
		flags: ext4spec.FlagExtents,
		time:  d.hdr.Mtime,
	}
	if indexed {
		in.flags |= ext4spec.FlagIndex
	}
	if err := w.finishInode(d.ino, exts, in, n); err != nil {
		return err
	}
	if cap(w.dirBuf) > 16*mib { // don't keep a huge directory's buffer
		w.dirBuf = nil
	}
	return nil
}

func (w *Writer) dirData(blocks int) []byte {
	n := blocks * ext4spec.BlockSize
	if cap(w.dirBuf) < n {
		w.dirBuf = make([]byte, n)
	}
	b := w.dirBuf[:n]
	clear(b)
	return b
}

func (w *Writer) linearDir(d *openDir) []byte {
	slices.SortFunc(d.ents, func(a, b dent) int { return bytes.Compare(d.name(a), d.name(b)) })
	b := w.dirData(1)
	putDirent(b, d.ino, 12, []byte("."), ftDir)
	off := 12
	prev := off
	putDirent(b[off:], d.parent, 12, []byte(".."), ftDir)
	off += 12
	for _, e := range d.ents {
		prev = off
		r := recLen(int(e.nlen))
		putDirent(b[off:], e.ino, r, d.name(e), e.ft)
		off += r
	}
	binary.LittleEndian.PutUint16(b[prev+4:], uint16(ext4spec.DirLeafSpace-prev))
	putDirTail(b, inodeSeed(w.fsSeed, d.ino))
	return b
}

type hashed struct {
	hash uint32
	idx  uint32
}

func (w *Writer) htreeDir(d *openDir) ([]byte, error) {
	hs := make([]hashed, len(d.ents))
	for i, e := range d.ents {
		hs[i] = hashed{dirHash(&w.seed, d.name(e)), uint32(i)}
	}
	slices.SortFunc(hs, func(a, b hashed) int {
		if a.hash != b.hash {
			if a.hash < b.hash {
				return -1
			}
			return 1
		}
		return bytes.Compare(d.name(d.ents[a.idx]), d.name(d.ents[b.idx]))
	})
	// Pack leaves greedily; starts[i] is the first entry of leaf i.
	var starts []int
	used := ext4spec.DirLeafSpace
	for i, h := range hs {
		r := recLen(int(d.ents[h.idx].nlen))
		if used+r > ext4spec.DirLeafSpace {
			starts = append(starts, i)
			used = 0
		}
		used += r
	}
	leaves := len(starts)
	levels := 0
	nodes := 0
	if leaves > dxRootLimit {
		levels = 1
		nodes = (leaves + dxNodeLimit - 1) / dxNodeLimit
		if nodes > dxRootLimit {
			return nil, fmt.Errorf("ext4: directory %q too large (%d entries)", d.path, len(d.ents))
		}
	}
	data := w.dirData(1 + nodes + leaves)
	seed := inodeSeed(w.fsSeed, d.ino)
	firstLeaf := 1 + nodes

	// Leaf blocks, and the index key of each: its first hash, with the low
	// bit set when it continues a run of equal hashes from the leaf before.
	keys := make([]uint32, leaves)
	for l := 0; l < leaves; l++ {
		b := data[(firstLeaf+l)*ext4spec.BlockSize : (firstLeaf+l+1)*ext4spec.BlockSize]
		end := len(hs)
		if l+1 < leaves {
			end = starts[l+1]
		}
		off, prev := 0, 0
		for _, h := range hs[starts[l]:end] {
			e := d.ents[h.idx]
			prev = off
			r := recLen(int(e.nlen))
			putDirent(b[off:], e.ino, r, d.name(e), e.ft)
			off += r
		}
		binary.LittleEndian.PutUint16(b[prev+4:], uint16(ext4spec.DirLeafSpace-prev))
		putDirTail(b, seed)
		keys[l] = hs[starts[l]].hash
		if l > 0 && hs[starts[l]-1].hash == keys[l] {
			keys[l] |= 1
		}
	}

	root := data[:ext4spec.BlockSize]
	putDirent(root, d.ino, 12, []byte("."), ftDir)
	putDirent(root[12:], d.parent, ext4spec.BlockSize-12, []byte(".."), ftDir)
	root[0x18+4] = dxHashHalfMD4
	root[0x18+5] = 8 // info length
	root[0x18+6] = uint8(levels)
	if levels == 0 {
		putDxEntries(root, 0x20, dxRootLimit, keys, firstLeaf, seed)
		return data, nil
	}
	var nodeKeys []uint32
	for k := 0; k < nodes; k++ {
		lo := k * dxNodeLimit
		hi := min(lo+dxNodeLimit, leaves)
		b := data[(1+k)*ext4spec.BlockSize : (2+k)*ext4spec.BlockSize]
		binary.LittleEndian.PutUint16(b[4:], ext4spec.BlockSize) // fake empty dirent
		putDxEntries(b, 0x08, dxNodeLimit, keys[lo:hi], firstLeaf+lo, seed)
		nodeKeys = append(nodeKeys, keys[lo])
	}
	putDxEntries(root, 0x20, dxRootLimit, nodeKeys, 1, seed)
	return data, nil
}

// putDxEntries writes count/limit, the entries (the first entry's hash slot
// holds count/limit; it covers everything below the second key) pointing at
// consecutive logical blocks from first, and the dx_tail checksum.
func putDxEntries(b []byte, at int, limit int, keys []uint32, first int, seed uint32) {
	le := binary.LittleEndian
	le.PutUint16(b[at:], uint16(limit))
	le.PutUint16(b[at+2:], uint16(len(keys)))
	for i, k := range keys {
		if i > 0 {
			le.PutUint32(b[at+8*i:], k)
		}
		le.PutUint32(b[at+8*i+4:], uint32(first+i))
	}
	le.PutUint32(b[at+8*limit+4:], ext4spec.DxTailChecksum(seed, b, at, len(keys), limit))
}
