package fat

import (
	"bytes"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// fatChunk is the unit in which the first FAT is kept: chunks that are
// holes or zeros are not stored, so a big, mostly free FAT costs little.
const fatChunk = 64 << 10

// table is the first FAT's entries 0 .. clusters+1.
type table struct {
	chunks [][]byte // nil: all zero
	heads  [][]byte // entries 0 and 1 (8 bytes) of each FAT
}

func (t *table) next(c uint32) uint32 {
	ch := t.chunks[int64(c)*4/fatChunk]
	if ch == nil {
		return 0
	}
	return le.Uint32(ch[int64(c)*4%fatChunk:]) & fatspec.EntryMask
}

func (v *volume) next(c uint32) uint32 { return v.fat.next(c) }

// readFATs loads the first FAT and checks every other copy matches it,
// reading only where the file has data. Entries 0 and 1 hold no
// allocation (and Windows keeps flags in 1).
func (v *volume) readFATs() error {
	n := (int64(v.clusters) + 2) * 4 // ≤ maxFATBytes, checked by parseBoot
	v.fat.chunks = make([][]byte, (n+fatChunk-1)/fatChunk)
	for i := range v.nfats {
		h, err := v.read(v.fatOff(i), 8)
		if err != nil {
			return err
		}
		v.fat.heads = append(v.fat.heads, h)
	}
	buf := make([]byte, fatChunk)
	for i := range v.nfats {
		for k := range v.fat.chunks {
			base := int64(k) * fatChunk
			b := buf[:min(fatChunk, n-base)]
			at := v.fatOff(i) + base
			if v.nextData(at, at+int64(len(b))) == at+int64(len(b)) {
				clear(b) // a hole
			} else if err := v.readAt(b, at); err != nil {
				return err
			}
			if k == 0 {
				clear(b[:8])
			}
			if i == 0 {
				if !allZero(b) {
					v.fat.chunks[k] = bytes.Clone(b)
				}
				continue
			}
			want := v.fat.chunks[k]
			if want == nil {
				if allZero(b) {
					continue
				}
				want = make([]byte, len(b)) // only to report the difference
			}
			if j := mismatch(b, want); j >= 0 {
				c := (base + int64(j)) / 4
				o := (c*4 - base)
				return fmt.Errorf("fat: FAT 1 and FAT %d differ at cluster %d (%#08x, %#08x); repair with fsck.vfat first",
					i+1, c, le.Uint32(want[o:]), le.Uint32(b[o:]))
			}
		}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// mismatch returns the index of the first byte where a and b differ, or -1.
func mismatch(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// freeHints returns FSInfo's free count and next-free hint as the Writer
// computes them: all free clusters, and the first one (0xFFFFFFFF for none).
func (v *volume) freeHints() (free, first uint32) {
	const per = fatChunk / 4
	first = fatspec.FSInfoUnknown
	for c, end := uint32(2), v.clusters+2; c < end; {
		n := uint32(1)
		if v.fat.chunks[c/per] == nil {
			n = min(c/per*per+per, end) - c // a chunk of free entries
		} else if v.next(c) != 0 {
			c++
			continue
		}
		if free == 0 {
			first = c
		}
		free, c = free+n, c+n
	}
	return free, first
}
