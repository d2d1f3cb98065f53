package fat

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// walk normalises every directory reachable from the root and returns the
// clusters that changed. Nothing is written, so a broken tree found late
// leaves the filesystem untouched.
func (v *volume) walk(t int64, rep *NormalizeReport) ([]pendingWrite, error) {
	tm := fatspec.EncodeTime(t)

	seen := make([]uint64, (v.clusters+2+63)/64)
	type todo struct {
		first uint32
		path  string
	}
	stack := []todo{{v.root, "/"}}
	var writes []pendingWrite
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		cs, err := v.chain(d.first, seen, d.path)
		if err != nil {
			return nil, err
		}
		b := make([]byte, 0, int64(len(cs))*v.cs)
		for _, c := range cs {
			p, err := v.read(v.clusterOff(c), v.cs)
			if err != nil {
				return nil, err
			}
			b = append(b, p...)
		}
		orig := bytes.Clone(b)
		subs, err := normalizeDir(b, tm, rep)
		if err != nil {
			return nil, fmt.Errorf("fat: directory %s: %w", d.path, err)
		}
		for _, s := range subs {
			stack = append(stack, todo{s.first, d.path + s.name + "/"})
		}
		for i, c := range cs {
			lo, hi := int64(i)*v.cs, int64(i+1)*v.cs
			if !bytes.Equal(b[lo:hi], orig[lo:hi]) {
				writes = append(writes, pendingWrite{v.clusterOff(c), b[lo:hi]})
			}
		}
	}
	return writes, nil
}

type subdir struct {
	name  string // short name, for messages
	first uint32
}

// normalizeDir rewrites one directory's entries in b and returns its
// subdirectories.
func normalizeDir(b []byte, tm fatspec.Time, rep *NormalizeReport) ([]subdir, error) {
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
	var subs []subdir
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
			if e[fatspec.DirAttr]&(fatspec.AttrDir|fatspec.AttrVolumeID) != fatspec.AttrDir || dot {
				continue
			}
			first := fatspec.FirstCluster(e)
			s := strings.TrimRight(string(name[:8]), " ")
			if ext := strings.TrimRight(string(name[8:]), " "); ext != "" {
				s += "." + ext
			}
			if first == 0 {
				return nil, fmt.Errorf("subdirectory %s has no cluster", s)
			}
			subs = append(subs, subdir{s, first})
		}
	}
	// Everything after the last entry in use is free: one 0x00 end marker
	// and zeros, whatever was deleted or left there before.
	for i := last + 1; i < n; i++ {
		if wipe(slot(i)) {
			rep.Cleared++
		}
	}
	return subs, nil
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
