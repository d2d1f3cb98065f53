package fat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
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

// Normalize rewrites, in place, the FAT32 filesystem at f[offset:] so that
// two copies that differ only in what a FAT driver writes as a side effect
// become byte-identical: every short entry's times, the FSInfo hints, the
// dirty bits and the backup sectors. It is meant for an ESP that a Writer
// created and a guest then changed (bootctl, grub-install through Linux's
// vfat driver).
//
// Free directory slots lose their history: a deleted entry keeps only its
// 0xE5 marker (0x00 would end the directory early), and deleted entries
// after the last live one, like anything after an end marker, become zero.
// Free clusters lose the data of deleted files (they become holes, or
// zeros). Names, attributes, clusters, sizes and entry order are left
// alone, so order of creation and cluster placement remain part of the
// content.
//
// It refuses, before writing anything, a filesystem whose BPB is not FAT32,
// whose FATs differ, or whose directory chains are broken (run fsck.vfat).
// It does not sync f.
func Normalize(f *os.File, offset int64, o NormalizeOptions) (NormalizeReport, error) {
	var rep NormalizeReport
	if offset < 0 {
		return rep, fmt.Errorf("fat: negative offset %d", offset)
	}
	v := &normVolume{f: f, off: offset}
	bs, err := v.parseBoot()
	if err != nil {
		return rep, err
	}
	if err := v.readFATs(); err != nil {
		return rep, err
	}
	writes, err := v.walk(o.Time, &rep)
	if err != nil {
		return rep, err
	}
	free, err := v.dirtyFree()
	if err != nil {
		return rep, err
	}
	rep.FreeCleared = len(free)

	// Boot sector: Linux marks a mounted volume in bit 0 of byte 65 and
	// Windows also uses bit 1; the Writer leaves both clear.
	newBS := bytes.Clone(bs)
	newBS[65] &^= 0x03
	rep.BootFixed = !bytes.Equal(newBS, bs)

	// FAT[1]: Windows clears its clean-shutdown (bit 27) and no-hard-error
	// (bit 26) bits while mounted; the Writer sets both. Entries 0 and 1 of
	// every copy then match the first FAT's.
	head := bytes.Clone(v.fat[:8])
	normLE.PutUint32(head[4:], normLE.Uint32(head[4:])|0x0C000000)
	for i, h := range v.heads {
		if !bytes.Equal(h, head) {
			rep.BootFixed = true
			writes = append(writes, normWrite{v.fatOff(i), head})
		}
	}

	var fsInfo []byte
	if v.fsInfo != 0 {
		old, err := v.read(v.fsInfo*v.bps, v.bps)
		if err != nil {
			return rep, err
		}
		if normLE.Uint32(old[0:]) != 0x41615252 || normLE.Uint32(old[484:]) != 0x61417272 || normLE.Uint32(old[508:]) != 0xAA550000 {
			return rep, fmt.Errorf("fat: FSInfo sector %d has no valid signature", v.fsInfo)
		}
		fsInfo = bytes.Clone(old)
		free, next := v.freeHints()
		normLE.PutUint32(fsInfo[488:], free)
		normLE.PutUint32(fsInfo[492:], next)
		if !bytes.Equal(fsInfo, old) {
			rep.FSInfoFixed = true
			writes = append(writes, normWrite{v.fsInfo * v.bps, fsInfo})
		}
	}
	// The backups must equal the primaries, as the Writer writes them and
	// fsck.vfat checks; Linux never updates them.
	if v.backup != 0 {
		old, err := v.read(v.backup*v.bps, v.bps)
		if err != nil {
			return rep, err
		}
		if !bytes.Equal(old, newBS) {
			rep.BootFixed = true
			writes = append(writes, normWrite{v.backup * v.bps, newBS})
		}
		if fsInfo != nil {
			at := (v.backup + v.fsInfo) * v.bps
			old, err := v.read(at, v.bps)
			if err != nil {
				return rep, err
			}
			if !bytes.Equal(old, fsInfo) {
				rep.FSInfoFixed = true
				writes = append(writes, normWrite{at, fsInfo})
			}
		}
	}
	if !bytes.Equal(newBS, bs) {
		writes = append(writes, normWrite{0, newBS}) // last, like the Writer
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.b, offset+w.off); err != nil {
			return rep, fmt.Errorf("fat: write: %w", err)
		}
	}
	zero := make([]byte, v.cs)
	for _, c := range free {
		// A hole where the file system allows, zeros otherwise: either
		// reads back as zeros.
		at := offset + v.clusterOff(c)
		if unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, at, v.cs) != nil {
			if _, err := f.WriteAt(zero, at); err != nil {
				return rep, fmt.Errorf("fat: write: %w", err)
			}
		}
	}
	return rep, nil
}

// dirtyFree lists the free clusters whose bytes are not all zero: what
// deleted files left behind (systemd-boot's random seed, replaced kernels).
func (v *normVolume) dirtyFree() ([]uint32, error) {
	var out []uint32
	buf := make([]byte, v.cs)
	for c := uint32(2); c < v.clusters+2; c++ {
		if v.next(c) != 0 {
			continue
		}
		if _, err := v.f.ReadAt(buf, v.off+v.clusterOff(c)); err != nil {
			return nil, fmt.Errorf("fat: reading free cluster %d: %w", c, err)
		}
		for _, b := range buf {
			if b != 0 {
				out = append(out, c)
				break
			}
		}
	}
	return out, nil
}

// ErrNotFAT32 is wrapped by Normalize's refusals of a filesystem whose BPB
// does not describe FAT32.
var ErrNotFAT32 = errors.New("fat: not a FAT32 filesystem")

var normLE = binary.LittleEndian

// normVolume is the layout of an existing FAT32 filesystem, from its BPB.
type normVolume struct {
	f        *os.File
	off      int64
	bps      int64 // bytes per sector
	cs       int64 // bytes per cluster
	nfats    int
	fatStart int64 // sector of the first FAT
	fatSize  int64 // sectors per FAT
	dataOff  int64 // byte offset of cluster 2
	clusters uint32
	root     uint32
	fsInfo   int64    // sector, 0 = none
	backup   int64    // sector, 0 = none
	fat      []byte   // the first FAT, entries 0 .. clusters+1
	heads    [][]byte // entries 0 and 1 of each FAT
}

type normWrite struct {
	off int64 // in the filesystem
	b   []byte
}

func (v *normVolume) read(off, n int64) ([]byte, error) {
	b := make([]byte, n)
	if _, err := v.f.ReadAt(b, v.off+off); err != nil {
		return nil, fmt.Errorf("fat: read at %d: %w", v.off+off, err)
	}
	return b, nil
}

func (v *normVolume) fatOff(i int) int64 { return (v.fatStart + int64(i)*v.fatSize) * v.bps }

func (v *normVolume) clusterOff(c uint32) int64 { return v.dataOff + int64(c-2)*v.cs }

// parseBoot checks the BPB describes FAT32 and returns the boot sector.
func (v *normVolume) parseBoot() ([]byte, error) {
	bs, err := v.read(0, sectorSize)
	if err != nil {
		return nil, err
	}
	notFAT32 := func(format string, a ...any) error {
		return fmt.Errorf("%w at offset %d: "+format, append([]any{ErrNotFAT32, v.off}, a...)...)
	}
	if bs[510] != 0x55 || bs[511] != 0xAA {
		return nil, notFAT32("no boot sector signature")
	}
	bps := int64(normLE.Uint16(bs[11:]))
	spc := int64(bs[13])
	reservedSecs := int64(normLE.Uint16(bs[14:]))
	v.nfats = int(bs[16])
	rootEnts, tot16, fat16 := normLE.Uint16(bs[17:]), normLE.Uint16(bs[19:]), normLE.Uint16(bs[22:])
	switch {
	case bps < 512 || bps > 4096 || bps&(bps-1) != 0:
		return nil, notFAT32("%d bytes per sector", bps)
	case spc == 0 || spc&(spc-1) != 0:
		return nil, notFAT32("%d sectors per cluster", spc)
	case reservedSecs == 0 || v.nfats == 0:
		return nil, notFAT32("%d reserved sectors, %d FATs", reservedSecs, v.nfats)
	case rootEnts != 0 || fat16 != 0 || tot16 != 0:
		// FAT12/16 have a fixed root directory and 16-bit FAT size.
		label := strings.TrimSpace(string(bs[54:62]))
		return nil, notFAT32("BPB has a fixed root directory of %d entries and a 16-bit FAT size of %d (type field %q)", rootEnts, fat16, label)
	case normLE.Uint16(bs[42:]) != 0:
		return nil, notFAT32("FAT32 version %#x, only 0 is defined", normLE.Uint16(bs[42:]))
	}
	v.bps, v.cs = bps, bps*spc
	v.fatStart = reservedSecs
	v.fatSize = int64(normLE.Uint32(bs[36:]))
	total := int64(normLE.Uint32(bs[32:]))
	dataSec := reservedSecs + int64(v.nfats)*v.fatSize
	if v.fatSize == 0 || total <= dataSec {
		return nil, notFAT32("%d sectors cannot hold %d FATs of %d sectors", total, v.nfats, v.fatSize)
	}
	v.dataOff = dataSec * bps
	clusters := (total - dataSec) / spc
	// Entries beyond what the FAT can map are unusable.
	clusters = min(clusters, v.fatSize*bps/4-2, maxClusters)
	if clusters < 1 {
		return nil, notFAT32("no data clusters")
	}
	v.clusters = uint32(clusters)
	v.root = normLE.Uint32(bs[44:])
	if v.root < 2 || v.root > v.clusters+1 {
		return nil, notFAT32("root cluster %d out of range", v.root)
	}
	sector := func(field int) (int64, error) {
		s := int64(normLE.Uint16(bs[field:]))
		if s == 0 || s == 0xFFFF {
			return 0, nil
		}
		if s >= reservedSecs {
			return 0, notFAT32("sector %d (BPB offset %d) outside the %d reserved sectors", s, field, reservedSecs)
		}
		return s, nil
	}
	if v.fsInfo, err = sector(48); err != nil {
		return nil, err
	}
	if v.backup, err = sector(50); err != nil {
		return nil, err
	}
	if v.backup != 0 && v.backup+v.fsInfo >= reservedSecs {
		return nil, notFAT32("backup FSInfo at sector %d outside the reserved sectors", v.backup+v.fsInfo)
	}
	if bps == sectorSize {
		return bs, nil
	}
	return v.read(0, bps)
}

// readFATs loads the first FAT and checks every other copy matches it.
// Entries 0 and 1 hold no allocation (and Windows keeps flags in 1).
func (v *normVolume) readFATs() error {
	n := (int64(v.clusters) + 2) * 4
	var err error
	if v.fat, err = v.read(v.fatOff(0), n); err != nil {
		return err
	}
	v.heads = [][]byte{v.fat[:8]}
	for i := 1; i < v.nfats; i++ {
		h, err := v.read(v.fatOff(i), 8)
		if err != nil {
			return err
		}
		v.heads = append(v.heads, h)
		for base := int64(8); base < n; base += chunk {
			b, err := v.read(v.fatOff(i)+base, min(chunk, n-base))
			if err != nil {
				return err
			}
			want := v.fat[base : base+int64(len(b))]
			if j := normMismatch(b, want); j >= 0 {
				c := (base + int64(j)) / 4
				return fmt.Errorf("fat: FAT 1 and FAT %d differ at cluster %d (%#08x, %#08x); repair with fsck.vfat first",
					i+1, c, normLE.Uint32(v.fat[c*4:]), normLE.Uint32(b[c*4-base:]))
			}
		}
	}
	return nil
}

func normMismatch(a, b []byte) int {
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

func (v *normVolume) next(c uint32) uint32 { return normLE.Uint32(v.fat[c*4:]) & 0x0FFFFFFF }

// freeHints returns FSInfo's free count and next-free hint as the Writer
// computes them: all free clusters, and the first one (0xFFFFFFFF for none).
func (v *normVolume) freeHints() (free, first uint32) {
	first = 0xFFFFFFFF
	for c := uint32(2); c < v.clusters+2; c++ {
		if v.next(c) == 0 {
			if free == 0 {
				first = c
			}
			free++
		}
	}
	return free, first
}

// chain returns a directory's clusters, marking them in seen so that a
// cross-linked or looping chain is an error rather than endless work.
func (v *normVolume) chain(first uint32, seen []uint64, path string) ([]uint32, error) {
	limit := int((maxDirSize + v.cs - 1) / v.cs)
	var cs []uint32
	for c := first; ; {
		if c < 2 || c > v.clusters+1 {
			return nil, fmt.Errorf("fat: directory %s: cluster %d out of range", path, c)
		}
		if seen[c/64]&(1<<(c%64)) != 0 {
			return nil, fmt.Errorf("fat: directory %s: cluster %d already in use (cross-linked or looping chain)", path, c)
		}
		seen[c/64] |= 1 << (c % 64)
		if cs = append(cs, c); len(cs) > limit {
			return nil, fmt.Errorf("fat: directory %s longer than FAT's 65536 entries", path)
		}
		switch n := v.next(c); {
		case n >= 0x0FFFFFF8:
			return cs, nil
		case n == 0 || n == 0x0FFFFFF7:
			return nil, fmt.Errorf("fat: directory %s: chain runs into free or bad cluster after %d", path, c)
		default:
			c = n
		}
	}
}

// walk normalises every directory reachable from the root and returns the
// clusters that changed. Nothing is written, so a broken tree found late
// leaves the filesystem untouched.
func (v *normVolume) walk(t int64, rep *NormalizeReport) ([]normWrite, error) {
	var tm normTimes
	tm.date, tm.tod, tm.tenth = fatTime(t)

	seen := make([]uint64, (v.clusters+2+63)/64)
	type todo struct {
		first uint32
		path  string
	}
	stack := []todo{{v.root, "/"}}
	var writes []normWrite
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
				writes = append(writes, normWrite{v.clusterOff(c), b[lo:hi]})
			}
		}
	}
	return writes, nil
}

type normSubdir struct {
	name  string // short name, for messages
	first uint32
}

// normalizeDir rewrites one directory's entries in b and returns its
// subdirectories.
func normalizeDir(b []byte, tm normTimes, rep *NormalizeReport) ([]normSubdir, error) {
	n := len(b) / 32
	slot := func(i int) []byte { return b[i*32 : (i+1)*32] }
	end := n // a 0x00 first byte ends the directory
	for i := range n {
		if b[i*32] == 0 {
			end = i
			break
		}
	}
	last := -1 // the last slot in use
	for i := range end {
		if b[i*32] != 0xE5 {
			last = i
		}
	}
	var subs []normSubdir
	for i := 0; i <= last; i++ {
		e := slot(i)
		switch {
		case e[0] == 0xE5:
			if normClear(e[1:]) {
				rep.Cleared++
			}
		case e[11]&0x3F == attrLongName:
			// Long-name pieces carry no times; orphans are left to fsck.
		default:
			rep.Entries++
			if tm.put(e) {
				rep.TimesChanged++
			}
			name := e[0:11]
			dot := string(name) == ".          " || string(name) == "..         "
			if e[11]&(attrDir|attrVolumeID) != attrDir || dot {
				continue
			}
			first := uint32(normLE.Uint16(e[20:]))<<16 | uint32(normLE.Uint16(e[26:]))
			s := strings.TrimRight(string(name[:8]), " ")
			if ext := strings.TrimRight(string(name[8:]), " "); ext != "" {
				s += "." + ext
			}
			if first == 0 {
				return nil, fmt.Errorf("subdirectory %s has no cluster", s)
			}
			subs = append(subs, normSubdir{s, first})
		}
	}
	// Everything after the last entry in use is free: one 0x00 end marker
	// and zeros, whatever was deleted or left there before.
	for i := last + 1; i < n; i++ {
		if normClear(slot(i)) {
			rep.Cleared++
		}
	}
	return subs, nil
}

// clearBytes zeroes b and reports whether anything changed.
func normClear(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			clear(b)
			return true
		}
	}
	return false
}

// normTimes is a timestamp in FAT's encoding.
type normTimes struct {
	date, tod uint16
	tenth     byte
}

// put sets all of a short entry's times, in the places putShort uses, and
// reports whether any changed.
func (tm normTimes) put(e []byte) bool {
	old := [13]byte(e[13:26])
	e[13] = tm.tenth
	putU16(e[14:], tm.tod) // creation
	putU16(e[16:], tm.date)
	putU16(e[18:], tm.date) // last access
	putU16(e[22:], tm.tod)  // last write
	putU16(e[24:], tm.date)
	return old != [13]byte(e[13:26])
}
