package ext4

import (
	"fmt"
	"math/bits"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// Sizer takes the same calls as a Writer, does no I/O, and tells how big a
// filesystem the tree needs. It keeps only the open directories' counters
// and a 64-bucket histogram of allocation sizes, never per-file state.
//
// The plan is exact for inodes and for everything but three upper bounds:
// every file block is assumed non-zero (holes only make the image smaller),
// htree directories assume the worst leaf packing, and extent-tree blocks
// assume the worst fragmentation the geometry allows.
//
// The Sizer checks the entry order like the Writer but not duplicate names.
type Sizer struct {
	JournalBlocks uint32 // must match Options.JournalBlocks

	stack   []sizerDir
	nextIno uint32
	started bool
	hist    [65]struct{ count, blocks uint64 } // by bits.Len64(blocks)
}

type sizerDir struct {
	path           string
	n, rec, maxRec uint64
}

// NewSizer returns an empty plan (root and lost+found only).
func NewSizer() *Sizer {
	s := &Sizer{nextIno: firstIno + 1}
	lpf := uint64(recLen(len("lost+found")))
	s.stack = []sizerDir{{n: 1, rec: lpf, maxRec: lpf}}
	return s
}

func (s *Sizer) record(blocks uint64) {
	k := bits.Len64(blocks)
	s.hist[k].count++
	s.hist[k].blocks += blocks
}

func (s *Sizer) closeDir(d sizerDir) {
	s.record(dirBlocks(d.n, d.rec, d.maxRec))
}

func (s *Sizer) enter(name string) (*sizerDir, error) {
	i, base, err := findParent(name, len(s.stack), func(i int) string { return s.stack[i].path })
	if err != nil {
		return nil, err
	}
	for len(s.stack) > i+1 {
		s.closeDir(s.stack[len(s.stack)-1])
		s.stack = s.stack[:len(s.stack)-1]
	}
	d := &s.stack[i]
	r := uint64(recLen(len(base)))
	d.n++
	d.rec += r
	d.maxRec = max(d.maxRec, r)
	s.started = true
	return d, nil
}

func (s *Sizer) newIno() uint32 { s.nextIno++; return s.nextIno - 1 }

// SetRoot is accepted for symmetry with Writer.
func (s *Sizer) SetRoot(h Header) error {
	if s.started {
		return fmt.Errorf("ext4: SetRoot after entries were added")
	}
	return nil
}

// Mkdir counts a directory.
func (s *Sizer) Mkdir(h Header) error {
	if h.Name == "lost+found" {
		return nil // preallocated, already counted
	}
	if _, err := s.enter(h.Name); err != nil {
		return err
	}
	s.newIno()
	s.stack = append(s.stack, sizerDir{path: h.Name})
	return nil
}

// Create counts a regular file and returns the inode number the Writer
// will give it (numbering is deterministic), for Link.
func (s *Sizer) Create(h Header) (uint32, error) {
	if h.Size < 0 {
		return 0, fmt.Errorf("ext4: %q: negative size", h.Name)
	}
	if _, err := s.enter(h.Name); err != nil {
		return 0, err
	}
	s.record((uint64(h.Size) + ext4spec.BlockSize - 1) / ext4spec.BlockSize)
	return s.newIno(), nil
}

// Symlink counts a symbolic link.
func (s *Sizer) Symlink(h Header, target string) error {
	if _, err := s.enter(h.Name); err != nil {
		return err
	}
	s.newIno()
	if len(target) >= 60 {
		s.record(1)
	}
	return nil
}

// Link counts a hard link (a directory entry only); ino is not checked.
func (s *Sizer) Link(name string, ino uint32) error {
	_, err := s.enter(name)
	return err
}

// InodesUsed is the number of inodes the tree uses so far, reserved ones
// (1-11) included.
func (s *Sizer) InodesUsed() uint32 { return s.nextIno - 1 }

// Plan returns the smallest size (a multiple of 1 MiB) and an inode count
// such that a Writer with Options{Size: size, Inodes: inodes} accepts the
// same calls and keeps at least extraBytes free.
//
// Inode rule: used + 10% + one per 64 KiB of extraBytes, so the free space
// stays usable for files averaging 64 KiB; the Writer then rounds up to
// whole inode-table blocks per group.
func (s *Sizer) Plan(extraBytes int64) (size int64, inodes uint32) {
	// Close a copy of the open directories so Plan can be called any time.
	saved := s.hist
	for i := len(s.stack) - 1; i >= 0; i-- {
		s.closeDir(s.stack[i])
	}
	hist := s.hist
	s.hist = saved

	extraBytes = max(extraBytes, 0)
	used := uint64(s.nextIno - 1)
	in := used + used/10 + uint64(extraBytes)/(64<<10)
	inodes = uint32(min(in, 1<<32-1))
	extra := (uint64(extraBytes) + ext4spec.BlockSize - 1) / ext4spec.BlockSize

	var data uint64
	for _, b := range hist {
		data += b.blocks
	}
	const step = mib / ext4spec.BlockSize
	groupsForInodes := (in + maxIPG - 1) / maxIPG
	blocks := max(data+extra+in/ext4spec.InodesPerBlock, (groupsForInodes-1)*blocksPerGroup+step, 2*step)
	blocks = (blocks + step - 1) / step * step
	for {
		g, err := newGeometry(int64(blocks)*ext4spec.BlockSize, inodes, s.JournalBlocks)
		if err != nil && blocks < 1<<40 {
			blocks += step
			continue
		}
		if err != nil {
			return int64(blocks) * ext4spec.BlockSize, inodes // beyond any real tree; NewWriter will say why
		}
		gap := g.minGap()
		need := data + extra + 4 // lost+found
		need += uint64(g.journalBlocks) + extentTreeBlocks(extentBound(uint64(g.journalBlocks), gap))
		for k, b := range hist {
			if b.count == 0 || k == 0 {
				continue
			}
			biggest := uint64(1)<<k - 1
			if extentBound(biggest, gap) <= 4 {
				continue // every file of this bucket fits in the inode
			}
			// Sum of per-file bounds: each ceil() adds at most one.
			ext := b.blocks/ext4spec.MaxExtentLen + b.blocks/gap + 3*b.count
			need += ext/(extentsInNode-1) + 4*b.count
		}
		avail := g.blocks - g.reservedTotal
		if need <= avail {
			return int64(blocks) * ext4spec.BlockSize, inodes
		}
		blocks += (need - avail + step - 1) / step * step
	}
}

// extentBound is the most extents n blocks allocated in one go can need:
// one per maximal extent, one per reserved span crossed, plus one.
func extentBound(n, gap uint64) uint64 {
	if n == 0 {
		return 0
	}
	return (n+ext4spec.MaxExtentLen-1)/ext4spec.MaxExtentLen + (n+gap-1)/gap + 1
}
