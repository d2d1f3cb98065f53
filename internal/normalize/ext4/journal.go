package ext4

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// journal is where inode 8's blocks are.
type journal struct {
	exts   []extent
	blocks uint64
}

// checkJournal finds the journal and refuses one that still holds
// transactions to replay, or that is not what jbd2 would load: every block
// of it mapped and initialised, inside the filesystem, and its superblock
// agreeing with the inode.
func (n *normalizer) checkJournal() (*journal, error) {
	j, err := n.loadJournal()
	if j == nil || err != nil {
		return nil, err
	}
	b := n.blk
	if err := n.readBlock(b, j.exts[0].Pblk); err != nil {
		return nil, err
	}
	be := binary.BigEndian
	if be.Uint32(b[0:]) != ext4spec.JournalMagic {
		return nil, errors.New("ext4: journal has no JBD2 superblock")
	}
	// What jbd2's journal_load checks: its block size, a length that fits
	// the inode, a first log block inside it.
	if bs, maxlen, first := be.Uint32(b[0x0C:]), uint64(be.Uint32(b[0x10:])), uint64(be.Uint32(b[0x14:])); bs != ext4spec.BlockSize || maxlen > j.blocks || first == 0 || first >= maxlen {
		return nil, fmt.Errorf("ext4: journal superblock: block size %d, %d blocks from %d, in an inode of %d", bs, maxlen, first, j.blocks)
	}
	if be.Uint32(b[0x1C:]) != 0 {
		return nil, errors.New("ext4: journal is not empty (s_start != 0): filesystem needs recovery")
	}
	return j, nil
}

// loadJournal maps the journal inode, if there is one, and adds its blocks
// to the filesystem's own (v.meta).
func (v *volume) loadJournal() (*journal, error) {
	le := binary.LittleEndian
	if le.Uint32(v.sb[0x5C:])&ext4spec.CompatHasJournal == 0 {
		return nil, nil
	}
	if ino := le.Uint32(v.sb[0xE0:]); ino != ext4spec.JournalIno {
		return nil, fmt.Errorf("ext4: journal is not inode 8 (s_journal_inum %d)", ino)
	}
	in := make([]byte, ext4spec.InodeSize)
	if err := v.readInode(ext4spec.JournalIno, in); err != nil {
		return nil, err
	}
	if !v.inodeCsumOK(ext4spec.JournalIno, in) {
		return nil, errors.New("ext4: journal inode checksum mismatch")
	}
	seen := map[uint64]bool{}
	exts, err := v.fileExtents(ext4spec.JournalIno, in, seen)
	if err != nil {
		return nil, err
	}
	size := uint64(le.Uint32(in[0x04:])) | uint64(le.Uint32(in[0x6C:]))<<32
	j := &journal{exts: exts, blocks: size / ext4spec.BlockSize}
	// Mapped without gaps from block 0 (fileExtents returns them in order,
	// each inside the filesystem), so the journal is at most the filesystem.
	var mapped uint64
	for _, e := range exts {
		if e.Unwritten || uint64(e.Lblk) != mapped {
			return nil, fmt.Errorf("ext4: journal inode has a hole or an unwritten extent at block %d", e.Lblk)
		}
		mapped += uint64(e.Len)
	}
	if len(exts) == 0 || mapped != j.blocks || size%ext4spec.BlockSize != 0 || j.blocks > v.blocks || j.blocks < 2 {
		return nil, fmt.Errorf("ext4: journal inode maps %d blocks of %d", mapped, j.blocks)
	}
	// From here on the journal and its tree are the filesystem's own: no
	// other inode's block may lie there (clearJournal zeroes them).
	var jr []blockRange
	var total uint64
	for _, e := range exts {
		if v.isMeta(e.Pblk, uint64(e.Len)) {
			return nil, fmt.Errorf("ext4: journal block %d is other filesystem metadata", e.Pblk)
		}
		jr = append(jr, blockRange{e.Pblk, uint64(e.Len)})
		total += uint64(e.Len)
	}
	for blk := range seen {
		jr = append(jr, blockRange{blk, 1})
		total++
	}
	var merged uint64
	for _, r := range mergeRanges(jr) {
		merged += r.Len
	}
	if merged != total {
		return nil, errors.New("ext4: the journal maps a block twice")
	}
	v.meta = mergeRanges(append(v.meta, jr...))
	return j, nil
}

// clearJournal resets the journal superblock to a fresh one and removes the
// old transactions: the kernel needs neither once the journal is empty
// (s_start 0), and it sets its features (csum v3, 64bit) again on mount.
func (n *normalizer) clearJournal(j *journal) (bool, error) {
	changed := false
	cur := make([]byte, ext4spec.BlockSize)
	if err := n.readBlock(cur, j.exts[0].Pblk); err != nil {
		return false, err
	}
	fresh := make([]byte, ext4spec.BlockSize)
	ext4spec.PutEmptyJournalSuper(fresh, j.blocks, n.sb[0x68:0x78])
	if !bytes.Equal(cur, fresh) {
		if err := n.writeAt(fresh, int64(j.exts[0].Pblk)*ext4spec.BlockSize); err != nil {
			return false, err
		}
		changed = true
	}
	for i, e := range j.exts {
		start, cnt := e.Pblk, uint64(e.Len)
		if i == 0 {
			start, cnt = start+1, cnt-1
		}
		c, err := n.zeroRange(int64(start)*ext4spec.BlockSize, int64(cnt)*ext4spec.BlockSize)
		if err != nil {
			return changed, err
		}
		changed = changed || c
	}
	return changed, nil
}

// zeroRange makes [pos, pos+size) of the filesystem read as zeros, punching
// holes (the image stays sparse) over chunks that hold anything else and
// skipping existing holes. It reports whether any byte changed.
func (n *normalizer) zeroRange(pos, size int64) (bool, error) {
	// Everything below stays inside [pos, pos+size): checked here once.
	if err := n.span(pos, size); err != nil {
		return false, fmt.Errorf("ext4: refusing to zero: %w", err)
	}
	fd := int(n.f.Fd())
	// SEEK_DATA moves the shared file offset; put it back for the caller.
	if saved, err := n.f.Seek(0, io.SeekCurrent); err == nil {
		defer n.f.Seek(saved, io.SeekStart)
	}
	const chunk = 1 << 20
	if n.zbuf == nil {
		n.zbuf = make([]byte, chunk) // once: a journal may have many extents
	}
	buf := n.zbuf
	changed := false
	abs, end := n.off+pos, n.off+pos+size
	for abs < end {
		d, err := unix.Seek(fd, abs, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			return changed, nil // only a hole up to EOF
		case err != nil:
			d = abs // no SEEK_DATA (e.g. a block device): read everything
		}
		if d >= end {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil || h > end {
			h = end
		}
		for p := d; p < h; {
			m := min(chunk, h-p)
			if _, err := n.f.ReadAt(buf[:m], p); err != nil {
				return changed, fmt.Errorf("ext4: read journal: %w", err)
			}
			if !isZero(buf[:m]) {
				if err := punch(n.f, p, m, buf[:m]); err != nil {
					return changed, err
				}
				changed = true
			}
			p += m
		}
		abs = h
	}
	return changed, nil
}

// punch zeroes [p, p+m), as a hole where the file supports it.
func punch(f *os.File, p, m int64, scratch []byte) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, p, m)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("ext4: punching hole: %w", err)
	}
	clear(scratch)
	if _, err := f.WriteAt(scratch, p); err != nil {
		return fmt.Errorf("ext4: zeroing journal: %w", err)
	}
	return nil
}
