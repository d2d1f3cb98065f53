package fat

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"unicode/utf16"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// dirent is one entry of an open directory.
type dirent struct {
	name  string
	short [11]byte
	lfn   bool // needs long-name entries
	attr  byte
	mtime int64
	first uint32 // first cluster of a file, 0 when empty
	size  uint32
	sub   *dir // directories: placed at Close
}

// dir is a directory kept open until Close.
type dir struct {
	path     string
	parent   *dir // nil for the root
	mtime    int64
	ents     []dirent
	keys     map[string]bool // foldKey of every name
	first    uint32
	clusters uint32
}

func (d *dir) add(e dirent) {
	d.keys[foldKey(e.name)] = true
	d.ents = append(d.ents, e)
}

// slots is the number of 32-byte entries d needs.
func (d *dir) slots(label bool) int {
	n := 0
	switch {
	case d.parent != nil:
		n = 2 // . and ..
	case label:
		n = 1
	}
	for _, e := range d.ents {
		n++
		if e.lfn {
			n += (len(utf16.Encode([]rune(e.name))) + 12) / 13
		}
	}
	return n
}

// writeDirs names, sizes, places and writes every directory. Placement
// comes first because a parent records its children's clusters and each
// child its parent's.
func (w *Writer) writeDirs() error {
	cs := w.g.clusterSize()
	hasLabel := w.opts.Label != ""
	var need uint32
	for _, d := range w.all {
		slices.SortFunc(d.ents, func(a, b dirent) int { return strings.Compare(a.name, b.name) })
		if err := d.shortNames(); err != nil {
			return err
		}
		size := int64(d.slots(hasLabel)) * fatspec.DirEntrySize
		if size > fatspec.MaxDirSize {
			return fmt.Errorf("fat: directory %q needs %d entries, FAT allows 65536", d.path, size/fatspec.DirEntrySize)
		}
		d.clusters = uint32(max(1, (size+cs-1)/cs))
		need += d.clusters
	}
	if need-1 > w.free() { // the root's first cluster is already reserved
		return fmt.Errorf("%w: directories need %d more clusters of %d bytes, %d free", ErrFull, need-1, cs, w.free())
	}
	root := w.all[0]
	root.first = rootCluster
	if root.clusters > 1 {
		start, _ := w.alloc(root.clusters - 1)
		w.runs[0].next = start
	}
	for _, d := range w.all[1:] {
		d.first, _ = w.alloc(d.clusters)
	}

	for _, d := range w.all {
		b := w.encodeDir(d, hasLabel)
		if d.parent == nil && d.clusters > 1 {
			if err := w.writeAt(b[:cs], w.g.clusterOffset(rootCluster)); err != nil {
				return err
			}
			if err := w.writeAt(b[cs:], w.g.clusterOffset(w.runs[0].next)); err != nil {
				return err
			}
			continue
		}
		if err := w.writeAt(b, w.g.clusterOffset(d.first)); err != nil {
			return err
		}
	}
	return nil
}

// encodeDir returns d's clusters. Unused slots stay zero: a zero first byte
// ends the directory for every reader.
func (w *Writer) encodeDir(d *dir, hasLabel bool) []byte {
	b := make([]byte, int64(d.clusters)*w.g.clusterSize())
	p := b
	put := func(name [11]byte, attr byte, first, size uint32, t int64) {
		putShort(p, name, attr, first, size, t)
		p = p[fatspec.DirEntrySize:]
	}
	switch {
	case d.parent != nil:
		var dot, dotdot [11]byte
		fill11(&dot, ".", "")
		fill11(&dotdot, "..", "")
		put(dot, fatspec.AttrDir, d.first, 0, d.mtime)
		up := d.parent.first
		if d.parent.parent == nil {
			up = 0 // the spec's way to name the root here, whatever its cluster
		}
		put(dotdot, fatspec.AttrDir, up, 0, d.mtime)
	case hasLabel:
		put(w.label, fatspec.AttrVolumeID, 0, 0, w.opts.Time)
	}
	for _, e := range d.ents {
		if e.lfn {
			l := longEntries(e.name, checksum(e.short))
			copy(p, l)
			p = p[len(l):]
		}
		first := e.first
		if e.sub != nil {
			first = e.sub.first
		}
		put(e.short, e.attr, first, e.size, e.mtime)
	}
	return b
}

// putShort encodes a short (8.3) entry; all three times are t.
func putShort(b []byte, name [11]byte, attr byte, first, size uint32, t int64) {
	copy(b[fatspec.DirName:fatspec.DirName+11], name[:])
	b[fatspec.DirAttr] = attr
	fatspec.PutTimes(b, fatspec.EncodeTime(t))
	fatspec.PutFirstCluster(b, first)
	binary.LittleEndian.PutUint32(b[fatspec.DirFileSize:], size)
}
