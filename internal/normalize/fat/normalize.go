// Package fat rewrites, in place, a FAT32 filesystem that a FAT driver has
// changed so that two copies differing only in the driver's side effects
// become byte-identical; every byte it reads is untrusted.
package fat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// NormalizeOptions control Normalize.
type NormalizeOptions struct {
	// Time (unix seconds) replaces every timestamp, encoded exactly as the
	// Writer encodes Header.Mtime: UTC, clamped to 1980..2107, and an odd
	// second kept in the creation 10 ms field (0 for an even Time).
	Time int64
}

// NormalizeReport says what Normalize found and changed. A second Normalize
// with the same options reports only Entries.
type NormalizeReport struct {
	Entries      int  // short entries walked, with ".", ".." and the volume label
	TimesChanged int  // of those, entries whose timestamps were rewritten
	Cleared      int  // free slots (deleted entries, slack after the end) whose leftovers were zeroed
	FreeCleared  int  // free clusters that still held a deleted file's data, zeroed
	FSInfoFixed  bool // free count or next-free hint rewritten, or the backup FSInfo resynced
	BootFixed    bool // dirty bits (boot sector, FAT[1]) cleared, or FAT heads or the backup boot sector resynced
}

// ErrNotFAT32 is wrapped by Normalize's refusals of a filesystem whose BPB
// does not describe FAT32.
var ErrNotFAT32 = errors.New("fat: not a FAT32 filesystem")

var le = binary.LittleEndian

// pendingWrite is a change Normalize has decided on but not yet made.
type pendingWrite struct {
	off int64 // in the filesystem
	b   []byte
}

// Normalize rewrites, in place, the FAT32 filesystem at f[offset:] so that
// two copies that differ only in what a FAT driver writes as a side effect
// become byte-identical: every short entry's times, the FSInfo hints, the
// dirty bits and the backup sectors. It is meant for an ESP that a Writer
// created and a guest then changed (bootctl, grub-install through Linux's
// vfat driver).
//
// The filesystem owns f[offset:offset+size] (its partition, or the whole
// file) and nothing else: one whose BPB claims more is refused, and no
// byte outside is read or written.
//
// Free directory slots lose their history: a deleted entry keeps only its
// 0xE5 marker (0x00 would end the directory early), and deleted entries
// after the last live one, like anything after an end marker, become zero.
// Free clusters lose the data of deleted files (they become holes, or
// zeros). Names, attributes, clusters, sizes and entry order are left
// alone, so order of creation and cluster placement remain part of the
// content.
//
// It refuses, before writing anything, a filesystem whose BPB is not FAT32
// or does not fit, whose FATs differ, whose directory or file chains are
// broken, loop or cross-link (run fsck.vfat), or that exceeds the limits
// above (maxFATBytes, maxDirBytes). It does not sync f.
func Normalize(f *os.File, offset, size int64, o NormalizeOptions) (NormalizeReport, error) {
	rep, _, err := normalize(f, offset, size, o)
	return rep, err
}

// normalize is Normalize, also returning the volume for tests of its cost.
func normalize(f *os.File, offset, size int64, o NormalizeOptions) (NormalizeReport, *volume, error) {
	var rep NormalizeReport
	if offset < 0 || size <= 0 || offset > math.MaxInt64-size {
		return rep, nil, fmt.Errorf("fat: bad range of %d bytes at %d", size, offset)
	}
	v := &volume{f: f, off: offset, end: size}
	// Finding data moves the file offset (SEEK_DATA); the caller's stays.
	if saved, err := f.Seek(0, io.SeekCurrent); err == nil {
		defer f.Seek(saved, io.SeekStart)
	}
	bs, err := v.parseBoot()
	if err != nil {
		return rep, v, err
	}
	if err := v.readFATs(); err != nil {
		return rep, v, err
	}
	writes, err := v.walk(o.Time, &rep)
	if err != nil {
		return rep, v, err
	}
	dirty, n, err := v.dirtyFree()
	if err != nil {
		return rep, v, err
	}
	rep.FreeCleared = n

	// Boot sector: Linux marks a mounted volume in bit 0 of byte 65 and
	// Windows also uses bit 1; the Writer leaves both clear.
	newBS := bytes.Clone(bs)
	newBS[fatspec.BootDirtyFlags] &^= fatspec.DirtyBits
	rep.BootFixed = !bytes.Equal(newBS, bs)

	// FAT[1]: Windows clears its clean-shutdown (bit 27) and no-hard-error
	// (bit 26) bits while mounted; the Writer sets both. Entries 0 and 1 of
	// every copy then match the first FAT's.
	head := bytes.Clone(v.fat.heads[0])
	le.PutUint32(head[4:], le.Uint32(head[4:])|fatspec.CleanBits)
	for i, h := range v.fat.heads {
		if !bytes.Equal(h, head) {
			rep.BootFixed = true
			writes = append(writes, pendingWrite{v.fatOff(i), head})
		}
	}

	var fsInfo []byte
	if v.fsInfo != 0 {
		old, err := v.read(v.fsInfo*v.bps, v.bps)
		if err != nil {
			return rep, v, err
		}
		if !fatspec.HasFSInfoSignatures(old) {
			return rep, v, fmt.Errorf("fat: FSInfo sector %d has no valid signature", v.fsInfo)
		}
		fsInfo = bytes.Clone(old)
		free, next := v.freeHints()
		le.PutUint32(fsInfo[fatspec.FSInfoFreeCount:], free)
		le.PutUint32(fsInfo[fatspec.FSInfoNextFree:], next)
		if !bytes.Equal(fsInfo, old) {
			rep.FSInfoFixed = true
			writes = append(writes, pendingWrite{v.fsInfo * v.bps, fsInfo})
		}
	}
	// The backups must equal the primaries, as the Writer writes them and
	// fsck.vfat checks; Linux never updates them.
	if v.backup != 0 {
		old, err := v.read(v.backup*v.bps, v.bps)
		if err != nil {
			return rep, v, err
		}
		if !bytes.Equal(old, newBS) {
			rep.BootFixed = true
			writes = append(writes, pendingWrite{v.backup * v.bps, newBS})
		}
		if fsInfo != nil {
			at := (v.backup + v.fsInfo) * v.bps
			old, err := v.read(at, v.bps)
			if err != nil {
				return rep, v, err
			}
			if !bytes.Equal(old, fsInfo) {
				rep.FSInfoFixed = true
				writes = append(writes, pendingWrite{at, fsInfo})
			}
		}
	}
	if !bytes.Equal(newBS, bs) {
		writes = append(writes, pendingWrite{0, newBS}) // last, like the Writer
	}
	if err := v.checkPlan(writes, dirty); err != nil {
		return rep, v, err
	}
	return rep, v, v.apply(writes, dirty)
}
