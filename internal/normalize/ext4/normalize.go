// Package ext4 rewrites in place the history-dependent fields (times,
// generations, journal, superblock counters) of an ext4 filesystem someone
// else wrote. Every byte it reads is untrusted.
package ext4

import (
	"os"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// NormalizeOptions say what the history-dependent fields become.
type NormalizeOptions struct {
	Time  int64 // every inode time and superblock time becomes this (or, with Clamp, min(t, Time))
	Clamp bool  // only lower times above Time (SOURCE_DATE_EPOCH semantics); default: set all to Time
}

// NormalizeReport says what Normalize changed. A second run over its own
// output reports zeros, false and no fields.
type NormalizeReport struct {
	Inodes            int  // in-use, initialised inodes visited
	TimesChanged      int  // inodes with at least one time changed
	GenerationsZeroed int  // inodes whose i_generation was not 0
	VersionsZeroed    int  // inodes whose i_version (NFS change counter) was not 0
	BlocksResealed    int  // extent-tree and directory blocks re-checksummed for generation 0
	FreeInodesCleared int  // free inode slots still holding a deleted inode, zeroed
	JournalCleared    bool // journal superblock reset and/or old transactions removed
	SuperblockFields  []string
	XattrInodes       []uint32 // inodes with an xattr block (i_file_acl): left alone
}

type normalizer struct {
	*volume
	o    NormalizeOptions
	rep  NormalizeReport
	blk  []byte          // scratch block for directory blocks and the journal
	bm   []byte          // the group's inode bitmap
	zbuf []byte          // zeroRange's chunk
	tbl  []byte          // one group's inode table, reused
	seen map[uint64]bool // extent-tree and directory blocks visited in this pass
}

// Normalize rewrites, in place, the fields of the ext4 filesystem at
// f[offset:] that a Linux kernel fills from the clock, its random number
// generator or its journal history, so that two images that went through
// the same operations become byte-identical. The filesystem must fit the
// size bytes its partition owns there; nothing outside is read or written.
// It only accepts cleanly unmounted filesystems with the writer's layout
// (4 KiB blocks, 256-byte inodes, 64bit, extents, metadata_csum) and
// verifies everything it reads (superblock, descriptor, inode, extent and
// directory checksums, every block number) in a dry pass before it writes
// anything; a write error can still leave it half done. Data blocks are
// never touched; directory and extent-tree blocks only get their checksums
// recomputed where the owner's generation changes (their checksum
// is seeded with it).
func Normalize(f *os.File, offset, size int64, o NormalizeOptions) (NormalizeReport, error) {
	v, err := loadVolume(f, offset, size)
	if err != nil {
		return NormalizeReport{}, err
	}
	n := &normalizer{volume: v, o: o, blk: make([]byte, ext4spec.BlockSize), bm: make([]byte, ext4spec.BlockSize)}
	jnl, err := n.checkJournal()
	if err != nil {
		return NormalizeReport{}, err
	}
	// A dry pass first verifies every checksum Normalize relies on, so a
	// damaged image is refused before any byte of it changes.
	for _, dry := range []bool{true, false} {
		n.dry, n.rep, n.seen = dry, NormalizeReport{}, map[uint64]bool{}
		for grp := uint32(0); grp < n.groups; grp++ {
			if err := n.group(grp); err != nil {
				return n.rep, err
			}
		}
	}
	if jnl != nil {
		if n.rep.JournalCleared, err = n.clearJournal(jnl); err != nil {
			return n.rep, err
		}
	}
	if err := n.superblocks(); err != nil {
		return n.rep, err
	}
	return n.rep, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
