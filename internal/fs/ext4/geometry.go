package ext4

import (
	"fmt"
	"sort"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

const (
	blockShift     = 12
	blocksPerGroup = 32768
	flexSize       = 16 // groups per flex_bg
	extraIsize     = 32
	firstIno       = 11
	maxIPG         = ext4spec.BlockSize * 8 // one bitmap block per group
	mib            = 1 << 20
)

// span is a half-open block range [start, end).
type span struct{ start, end uint64 }

// geometry is everything that follows from (size, inodes, journal size): the
// group count and where each group's bitmaps and inode table live. It is
// shared by the Writer and the Sizer so the plan and the real layout agree.
type geometry struct {
	blocks        uint64 // total blocks in the filesystem
	groups        uint32
	ipg           uint32 // inodes per group
	itb           uint32 // inode table blocks per group
	gdtBlocks     uint32
	journalBlocks uint32 // 0 = no journal (tiny filesystems, like mke2fs)
	bbitmap       []uint64
	ibitmap       []uint64
	itable        []uint64
	reserved      []span // sorted, merged: superblocks, GDTs, bitmaps, inode tables
	reservedTotal uint64
}

// defaultJournalBlocks follows e2fsprogs' ext2fs_default_journal_size.
func defaultJournalBlocks(blocks uint64) uint32 {
	switch {
	case blocks < 2048:
		return 0
	case blocks < 32768:
		return 1024
	case blocks < 256*1024:
		return 4096
	case blocks < 512*1024:
		return 8192
	case blocks < 4096*1024:
		return 16384
	case blocks < 32768*1024:
		return 32768
	default:
		return 262144
	}
}

func newGeometry(size int64, inodes uint32, journalBlocks uint32) (*geometry, error) {
	if size < 0 {
		return nil, fmt.Errorf("ext4: negative size %d", size)
	}
	blocks := uint64(size) >> blockShift
	if blocks >= 1<<48 {
		return nil, fmt.Errorf("ext4: size %d too large", size)
	}
	// A runt last group is dropped (as mke2fs does) rather than carrying a
	// superblock copy and bitmaps for a handful of blocks.
	if blocks > blocksPerGroup && blocks%blocksPerGroup != 0 && blocks%blocksPerGroup < 256 {
		blocks -= blocks % blocksPerGroup
	}
	if blocks < 64 {
		return nil, fmt.Errorf("ext4: size %d too small (need at least %d bytes)", size, 64*ext4spec.BlockSize)
	}
	g := &geometry{blocks: blocks}
	g.groups = uint32((blocks + blocksPerGroup - 1) / blocksPerGroup)
	g.gdtBlocks = uint32((uint64(g.groups)*ext4spec.DescSize + ext4spec.BlockSize - 1) / ext4spec.BlockSize)
	if inodes == 0 {
		inodes = uint32(min(blocks/4, 1<<32-1)) // 1 inode per 16 KiB
	}
	ipg := (uint64(inodes) + uint64(g.groups) - 1) / uint64(g.groups)
	ipg = (ipg + ext4spec.InodesPerBlock - 1) / ext4spec.InodesPerBlock * ext4spec.InodesPerBlock
	if ipg < ext4spec.InodesPerBlock {
		ipg = ext4spec.InodesPerBlock
	}
	if ipg*uint64(g.groups) < firstIno+1 {
		ipg = 2 * ext4spec.InodesPerBlock
	}
	if ipg > maxIPG {
		return nil, fmt.Errorf("ext4: %d inodes do not fit in %d groups (max %d per group); make the filesystem larger", inodes, g.groups, maxIPG)
	}
	if ipg*uint64(g.groups) > 1<<32-1 {
		return nil, fmt.Errorf("ext4: too many inodes (%d)", ipg*uint64(g.groups))
	}
	g.ipg = uint32(ipg)
	g.itb = g.ipg / ext4spec.InodesPerBlock
	if journalBlocks == 0 {
		journalBlocks = defaultJournalBlocks(blocks)
	} else if journalBlocks < 1024 {
		return nil, fmt.Errorf("ext4: journal of %d blocks is below the JBD2 minimum of 1024", journalBlocks)
	}
	g.journalBlocks = journalBlocks

	g.bbitmap = make([]uint64, g.groups)
	g.ibitmap = make([]uint64, g.groups)
	g.itable = make([]uint64, g.groups)
	var res []span
	for grp := uint32(0); grp < g.groups; grp++ {
		if ext4spec.HasSuperBackup(grp) {
			s := uint64(grp) * blocksPerGroup
			res = append(res, span{s, s + 1 + uint64(g.gdtBlocks)})
		}
	}
	sbRes := res
	// take places n contiguous blocks at or after *cur, stepping over
	// superblock/GDT copies.
	take := func(cur *uint64, n uint64) (uint64, error) {
		for {
			c := *cur
			moved := false
			for _, r := range sbRes {
				if r.start < c+n && c < r.end {
					*cur = r.end
					moved = true
					break
				}
				if r.start >= c+n {
					break
				}
			}
			if moved {
				continue
			}
			if c+n > blocks {
				return 0, fmt.Errorf("ext4: size %d too small for the group metadata", size)
			}
			*cur = c + n
			return c, nil
		}
	}
	for f := uint32(0); f < g.groups; f += flexSize {
		last := min(f+flexSize, g.groups)
		cur := uint64(f) * blocksPerGroup
		var err error
		for grp := f; grp < last && err == nil; grp++ {
			g.bbitmap[grp], err = take(&cur, 1)
		}
		for grp := f; grp < last && err == nil; grp++ {
			g.ibitmap[grp], err = take(&cur, 1)
		}
		for grp := f; grp < last && err == nil; grp++ {
			g.itable[grp], err = take(&cur, uint64(g.itb))
		}
		if err != nil {
			return nil, err
		}
	}
	for grp := uint32(0); grp < g.groups; grp++ {
		res = append(res, span{g.bbitmap[grp], g.bbitmap[grp] + 1},
			span{g.ibitmap[grp], g.ibitmap[grp] + 1},
			span{g.itable[grp], g.itable[grp] + uint64(g.itb)})
	}
	sort.Slice(res, func(i, j int) bool { return res[i].start < res[j].start })
	merged := res[:0:0]
	for _, r := range res {
		if n := len(merged); n > 0 && r.start <= merged[n-1].end {
			merged[n-1].end = max(merged[n-1].end, r.end)
			continue
		}
		merged = append(merged, r)
	}
	g.reserved = merged
	for _, r := range merged {
		g.reservedTotal += r.end - r.start
	}
	return g, nil
}

func (g *geometry) groupStart(grp uint32) uint64 { return uint64(grp) * blocksPerGroup }

func (g *geometry) groupBlocks(grp uint32) uint64 {
	return min(g.blocks-g.groupStart(grp), blocksPerGroup)
}

// minGap is the smallest free stretch between two reserved spans (or the
// end); it bounds how often a contiguous allocation can be split.
func (g *geometry) minGap() uint64 {
	gap := g.blocks
	for i, r := range g.reserved {
		next := g.blocks
		if i+1 < len(g.reserved) {
			next = g.reserved[i+1].start
		}
		if d := next - r.end; d > 0 && d < gap {
			gap = d
		}
	}
	return max(gap, 1)
}
