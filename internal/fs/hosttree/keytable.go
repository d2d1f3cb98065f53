package hosttree

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"golang.org/x/sys/unix"
)

// keyTable maps content keys to the inode of their first copy: open
// addressing with linear probing in one block of memory mapped outside the Go
// heap, sized once for every candidate the pre-pass counted (at most 7/8
// full: 23 bytes per candidate). Off the heap, it does not raise the garbage
// collector's target (which would let the heap grow by twice its size), and
// Free returns it to the system at once, before the writing walk.
type keyTable struct {
	b     []byte // slots of keySlot bytes: the key, then the inode (0: empty)
	slots uint64
	n     uint64
}

const keySlot = 16 + 4

func newKeyTable(candidates uint64) (*keyTable, error) {
	slots := candidates + candidates/7 + 1
	b, err := unix.Mmap(-1, 0, int(slots*keySlot), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mapping %d bytes for the content keys: %w", slots*keySlot, err)
	}
	return &keyTable{b: b, slots: slots}, nil
}

// Free unmaps the table.
func (t *keyTable) Free() {
	if t.b != nil {
		unix.Munmap(t.b)
		t.b = nil
	}
}

// slot returns k's slot and the inode it holds (0: k is not in the table,
// and the slot is where it goes).
func (t *keyTable) slot(k contentKey) (s []byte, ino uint32) {
	hi, _ := bits.Mul64(binary.LittleEndian.Uint64(k[:8]), t.slots) // keys are uniform: sha256
	for i := hi; ; {
		s = t.b[i*keySlot : (i+1)*keySlot]
		if ino = binary.LittleEndian.Uint32(s[16:]); ino == 0 || contentKey(s[:16]) == k {
			return s, ino
		}
		if i++; i == t.slots {
			i = 0
		}
	}
}

// get returns the inode of k's first copy, or 0.
func (t *keyTable) get(k contentKey) uint32 {
	_, ino := t.slot(k)
	return ino
}

// put sets the inode of k's first copy (ino != 0).
func (t *keyTable) put(k contentKey, ino uint32) error {
	if ino == 0 {
		return fmt.Errorf("inode 0")
	}
	s, old := t.slot(k)
	if old == 0 {
		if t.n+1 >= t.slots {
			// More candidates than the pre-pass counted.
			return fmt.Errorf("the closure changed while it was measured")
		}
		t.n++
		copy(s, k[:])
	}
	binary.LittleEndian.PutUint32(s[16:], ino)
	return nil
}
