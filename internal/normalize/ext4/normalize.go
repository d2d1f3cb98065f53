// Package ext4 rewrites in place the history-dependent fields (times,
// generations, journal, superblock counters) of an ext4 filesystem someone
// else wrote. Every byte it reads is untrusted.
package ext4

import (
	"errors"
	"fmt"
	"io"
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
	f       *os.File
	off     int64
	o       NormalizeOptions
	sb      []byte
	fsSeed  uint32
	blocks  uint64
	groups  uint32
	ipg     uint32
	bpg     uint32
	gdt     []byte
	gdtBlks uint32
	rep     NormalizeReport
	blk     []byte
	dry     bool // verify only: writeAt does nothing
}

// Normalize rewrites, in place, the fields of the ext4 filesystem at
// f[offset:] that a Linux kernel fills from the clock, its random number
// generator or its journal history, so that two images that went through
// the same operations become byte-identical. It only accepts cleanly
// unmounted filesystems with the writer's layout (4 KiB blocks, 256-byte
// inodes, 64bit, extents, metadata_csum) and verifies everything it reads
// (superblock, descriptor, inode, extent and directory checksums) before it
// writes anything; a write error can still leave it half done. Data blocks
// are never touched; directory and extent-tree blocks only get their
// checksums recomputed where the owner's generation changes (their checksum
// is seeded with it).
func Normalize(f *os.File, offset int64, o NormalizeOptions) (NormalizeReport, error) {
	n := &normalizer{f: f, off: offset, o: o, blk: make([]byte, ext4spec.BlockSize)}
	if err := n.load(); err != nil {
		return NormalizeReport{}, err
	}
	jnl, err := n.checkJournal()
	if err != nil {
		return NormalizeReport{}, err
	}
	// A dry pass first verifies every checksum Normalize relies on, so a
	// damaged image is refused before any byte of it changes.
	for _, dry := range []bool{true, false} {
		n.dry, n.rep = dry, NormalizeReport{}
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

func (n *normalizer) readAt(b []byte, pos int64) error {
	if _, err := n.f.ReadAt(b, n.off+pos); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("ext4: normalize: %s ends before byte %d of the filesystem", n.f.Name(), pos+int64(len(b)))
		}
		return fmt.Errorf("ext4: normalize: read: %w", err)
	}
	return nil
}

func (n *normalizer) writeAt(b []byte, pos int64) error {
	if n.dry {
		return nil
	}
	if _, err := n.f.WriteAt(b, n.off+pos); err != nil {
		return fmt.Errorf("ext4: normalize: write: %w", err)
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
