package ext4

import (
	"encoding/binary"
	"fmt"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

const extentsInNode = (ext4spec.BlockSize - 12 - 4) / 12

// addExtent appends a mapping, merging it into the previous extent when both
// logical and physical ranges continue it.
func addExtent(exts []ext4spec.Extent, lblk uint32, pblk uint64, n uint64) []ext4spec.Extent {
	for n > 0 {
		if k := len(exts); k > 0 {
			e := &exts[k-1]
			if e.Lblk+e.Len == lblk && e.Pblk+uint64(e.Len) == pblk && e.Len < ext4spec.MaxExtentLen {
				add := min(n, uint64(ext4spec.MaxExtentLen-e.Len))
				e.Len += uint32(add)
				lblk += uint32(add)
				pblk += add
				n -= add
				continue
			}
		}
		add := min(n, ext4spec.MaxExtentLen)
		exts = append(exts, ext4spec.Extent{Lblk: lblk, Len: uint32(add), Pblk: pblk})
		lblk += uint32(add)
		pblk += add
		n -= add
	}
	return exts
}

func putExtentHeader(b []byte, entries, maxEntries, depth uint16) {
	le := binary.LittleEndian
	le.PutUint16(b[0:], ext4spec.ExtentMagic)
	le.PutUint16(b[2:], entries)
	le.PutUint16(b[4:], maxEntries)
	le.PutUint16(b[6:], depth)
	le.PutUint32(b[8:], 0)
}

func putLeaf(b []byte, e ext4spec.Extent) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], e.Lblk)
	le.PutUint16(b[4:], uint16(e.Len))
	le.PutUint16(b[6:], uint16(e.Pblk>>32))
	le.PutUint32(b[8:], uint32(e.Pblk))
}

func putIndex(b []byte, lblk uint32, child uint64) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], lblk)
	le.PutUint32(b[4:], uint32(child))
	le.PutUint16(b[8:], uint16(child>>32))
	le.PutUint16(b[10:], 0)
}

// extentTreeBlocks is the number of tree blocks a file with n extents needs.
func extentTreeBlocks(n uint64) uint64 {
	var total uint64
	for n > 4 {
		n = (n + extentsInNode - 1) / extentsInNode
		total += n
	}
	return total
}

// buildExtentTree writes the tree for exts (allocating node blocks) and
// returns the inode's i_block and the number of node blocks used.
func (w *Writer) buildExtentTree(ino uint32, exts []ext4spec.Extent) (iblock [60]byte, nodes uint64, err error) {
	if len(exts) <= 4 {
		putExtentHeader(iblock[:], uint16(len(exts)), 4, 0)
		for i, e := range exts {
			putLeaf(iblock[12+12*i:], e)
		}
		return iblock, 0, nil
	}
	type ref struct {
		lblk uint32
		pblk uint64
	}
	seed := inodeSeed(w.fsSeed, ino)
	b := w.blk
	var level []ref
	// Leaves.
	for i := 0; i < len(exts); i += extentsInNode {
		chunk := exts[i:min(i+extentsInNode, len(exts))]
		clear(b)
		putExtentHeader(b, uint16(len(chunk)), extentsInNode, 0)
		for j, e := range chunk {
			putLeaf(b[12+12*j:], e)
		}
		p, err := w.writeNode(b, seed)
		if err != nil {
			return iblock, 0, err
		}
		nodes++
		level = append(level, ref{chunk[0].Lblk, p})
	}
	depth := uint16(1)
	for len(level) > 4 {
		var up []ref
		for i := 0; i < len(level); i += extentsInNode {
			chunk := level[i:min(i+extentsInNode, len(level))]
			clear(b)
			putExtentHeader(b, uint16(len(chunk)), extentsInNode, depth)
			for j, r := range chunk {
				putIndex(b[12+12*j:], r.lblk, r.pblk)
			}
			p, err := w.writeNode(b, seed)
			if err != nil {
				return iblock, 0, err
			}
			nodes++
			up = append(up, ref{chunk[0].lblk, p})
		}
		level = up
		depth++
		if depth > 5 {
			return iblock, 0, fmt.Errorf("ext4: extent tree too deep")
		}
	}
	putExtentHeader(iblock[:], uint16(len(level)), 4, depth)
	for i, r := range level {
		putIndex(iblock[12+12*i:], r.lblk, r.pblk)
	}
	return iblock, nodes, nil
}

// writeNode checksums an extent tree block (tail right after eh_max
// entries) and writes it to a freshly allocated block.
func (w *Writer) writeNode(b []byte, seed uint32) (uint64, error) {
	tail := 12 + 12*extentsInNode
	binary.LittleEndian.PutUint32(b[tail:], ext4spec.CRC32C(seed, b[:tail]))
	p, _, err := w.a.alloc(1)
	if err != nil {
		return 0, err
	}
	return p, w.writeAt(b, p)
}
