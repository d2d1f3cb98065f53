package fat

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// walk normalises every directory reachable from the root and returns the
// clusters that changed. Nothing is written, so a broken tree found late
// leaves the filesystem untouched. Every cluster of a directory or file
// is visited once (a second visit is a loop or a cross-link, refused), so
// the walk costs at most one step per cluster, and it reads at most
// maxDirBytes of directories.
func (v *volume) walk(t int64, rep *NormalizeReport) ([]pendingWrite, error) {
	tm := fatspec.EncodeTime(t)
	seen := newBitset(int64(v.clusters) + 2)
	// Paths are built only for messages: a tree of dirs, not a string
	// per directory (quadratic in the depth).
	type dirNode struct {
		parent int
		name   string
	}
	nodes := []dirNode{{-1, ""}}
	path := func(i int) string {
		var parts []string
		for ; i > 0 && len(parts) < 8; i = nodes[i].parent {
			parts = append(parts, nodes[i].name)
		}
		if i > 0 {
			parts = append(parts, "...")
		}
		slices.Reverse(parts)
		return "/" + strings.Join(append(parts, ""), "/")
	}
	type todo struct {
		first uint32
		node  int
	}
	stack := []todo{{v.root, 0}}
	var writes []pendingWrite
	left := int64(maxDirBytes)
	var b, orig []byte // one directory, reused
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		cs, err := v.chain(d.first, seen, func() string { return "directory " + path(d.node) }, true)
		if err != nil {
			return nil, err
		}
		n := int64(len(cs)) * v.cs // ≤ MaxDirSize rounded up to a cluster
		if left -= n; left < 0 {
			return nil, fmt.Errorf("fat: directories larger than the %d bytes this normaliser reads", maxDirBytes)
		}
		b = slices.Grow(b[:0], int(n))[:n]
		for i, c := range cs {
			if err := v.readAt(b[int64(i)*v.cs:int64(i+1)*v.cs], v.clusterOff(c)); err != nil {
				return nil, err
			}
		}
		orig = append(orig[:0], b...)
		refs, err := normalizeDir(b, tm, rep)
		if err != nil {
			return nil, fmt.Errorf("fat: directory %s: %w", path(d.node), err)
		}
		for _, r := range refs {
			if r.dir {
				nodes = append(nodes, dirNode{d.node, r.name})
				stack = append(stack, todo{r.first, len(nodes) - 1})
			} else if _, err := v.chain(r.first, seen, func() string { return "file " + path(d.node) + r.name }, false); err != nil {
				// Free clusters are zeroed: none may belong to a file.
				return nil, err
			}
		}
		for i, c := range cs {
			lo, hi := int64(i)*v.cs, int64(i+1)*v.cs
			if !bytes.Equal(b[lo:hi], orig[lo:hi]) {
				writes = append(writes, pendingWrite{off: v.clusterOff(c), b: bytes.Clone(b[lo:hi])})
			}
		}
	}
	return writes, nil
}

// chain follows a cluster chain, marking its clusters in seen so that a
// cross-linked or looping chain is an error rather than endless work, and
// returns them if keep (a directory's, at most FAT's 65536 entries).
func (v *volume) chain(first uint32, seen bitset, name func() string, keep bool) ([]uint32, error) {
	limit := int64(v.clusters)
	if keep {
		limit = (fatspec.MaxDirSize + v.cs - 1) / v.cs
	}
	var cs []uint32
	for c, n := first, int64(1); ; n++ {
		if c < 2 || c > v.clusters+1 {
			return nil, fmt.Errorf("fat: %s: cluster %d out of range", name(), c)
		}
		if seen.has(int64(c)) {
			return nil, fmt.Errorf("fat: %s: cluster %d already in use (cross-linked or looping chain)", name(), c)
		}
		seen.set(int64(c))
		if n > limit {
			return nil, fmt.Errorf("fat: %s longer than FAT's 65536 entries", name())
		}
		if keep {
			cs = append(cs, c)
		}
		switch next := v.next(c); {
		case next >= fatspec.EndOfChainMin:
			return cs, nil
		case next == 0 || next == fatspec.BadCluster:
			return nil, fmt.Errorf("fat: %s: its cluster %d is marked free or bad", name(), c)
		default:
			c = next
		}
	}
}

// bitset is one bit per cluster.
type bitset []uint64

func newBitset(n int64) bitset    { return make(bitset, (n+63)/64) }
func (s bitset) has(i int64) bool { return s[i/64]&(1<<(i%64)) != 0 }
func (s bitset) set(i int64)      { s[i/64] |= 1 << (i % 64) }

// ref is a directory entry's first cluster: a subdirectory to walk or a
// file whose chain must be sound.
type ref struct {
	name  string // short name, for messages
	first uint32
	dir   bool
}

// normalizeDir rewrites one directory's entries in b and returns the
// clusters its entries refer to.
func normalizeDir(b []byte, tm fatspec.Time, rep *NormalizeReport) ([]ref, error) {
	const size = fatspec.DirEntrySize
	n := len(b) / size
	slot := func(i int) []byte { return b[i*size : (i+1)*size] }
	end := n // a 0x00 first byte ends the directory
	for i := range n {
		if b[i*size] == 0 {
			end = i
			break
		}
	}
	last := -1 // the last slot in use
	for i := range end {
		if b[i*size] != fatspec.DirFreeMarker {
			last = i
		}
	}
	var refs []ref
	for i := 0; i <= last; i++ {
		e := slot(i)
		switch {
		case e[0] == fatspec.DirFreeMarker:
			if wipe(e[1:]) {
				rep.Cleared++
			}
		case e[fatspec.DirAttr]&fatspec.AttrLongNameMask == fatspec.AttrLongName:
			// Long-name pieces carry no times; orphans are left to fsck.
		default:
			rep.Entries++
			if setTimes(e, tm) {
				rep.TimesChanged++
			}
			name := e[fatspec.DirName : fatspec.DirName+11]
			dot := string(name) == ".          " || string(name) == "..         "
			if e[fatspec.DirAttr]&fatspec.AttrVolumeID != 0 || dot {
				continue
			}
			dir := e[fatspec.DirAttr]&fatspec.AttrDir != 0
			first := fatspec.FirstCluster(e)
			s := strings.TrimRight(string(name[:8]), " ")
			if ext := strings.TrimRight(string(name[8:]), " "); ext != "" {
				s += "." + ext
			}
			switch {
			case first == 0 && dir:
				return nil, fmt.Errorf("subdirectory %s has no cluster", s)
			case first != 0:
				refs = append(refs, ref{s, first, dir})
			}
		}
	}
	// Everything after the last entry in use is free: one 0x00 end marker
	// and zeros, whatever was deleted or left there before.
	for i := last + 1; i < n; i++ {
		if wipe(slot(i)) {
			rep.Cleared++
		}
	}
	return refs, nil
}

// wipe zeroes b and reports whether anything changed.
func wipe(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			clear(b)
			return true
		}
	}
	return false
}

// setTimes sets all of a short entry's times to tm, as the Writer puts
// them, and reports whether any changed.
func setTimes(e []byte, tm fatspec.Time) bool {
	old := [13]byte(e[fatspec.DirCreateTenth:]) // the times, with the cluster's high half among them
	fatspec.PutTimes(e, tm)
	return old != [13]byte(e[fatspec.DirCreateTenth:])
}
