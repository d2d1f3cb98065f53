// Package fat writes a deterministic FAT32 filesystem image, for the EFI
// system partition and the XBOOTLDR partition, the way archive/tar writes an
// archive: Mkdir and Create add entries parent first, Create returns a writer
// for exactly Header.Size bytes, and Close writes the directories, both FATs,
// FSInfo and the boot sectors (with their backups at sector 6 and 7).
//
// Every file is one contiguous run of clusters, handed out by a cursor that
// only moves forward; directories are kept open until Close and then placed
// after the file data (the root keeps cluster 2, as tools expect). So the FAT
// itself is never held in memory: it is generated at Close from the list of
// runs, in 1 MiB pieces. Memory is O(entries) — about 100 bytes plus the name
// per file or directory — which suits an ESP of hundreds or thousands of
// entries, not millions.
//
// Names keep their case. A name that is not already a valid upper-case 8.3
// name gets VFAT long-name entries and a generated short name (NAME~1.EXT),
// unique within its directory and derived from the sorted set of names, so
// it does not depend on the order of calls. Directory entries are sorted by
// name (byte order), with the volume label first in the root.
//
// FAT stores local time without a zone; every timestamp is written as UTC
// and clamped to FAT's range 1980-01-01 .. 2107-12-31 (so SOURCE_DATE_EPOCH
// style times before 1980 read back as 1980-01-01 00:00:00).
//
// Output is a pure function of Options and the calls: the same calls give a
// byte-identical image. Data clusters never written stay holes. A Writer is
// not safe for concurrent use.
package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

// Options describe the filesystem to create.
type Options struct {
	Size     int64  // filesystem size in bytes (rounded down to 512); at least MinSize(ClusterSize)
	Label    string // volume label, at most 11 characters, stored upper-cased; "" = none ("NO NAME")
	VolumeID uint32 // volume serial number
	Time     int64  // unix seconds for the label entry (the root has no timestamps)
	// ClusterSize in bytes, a power of two from 512 to 32768. 0 picks like
	// mkfs.fat and Microsoft's format do for FAT32: 512 B up to 260 MiB, 4 KiB
	// up to 8 GiB, then 8, 16, 32 KiB, which always leaves the 65525 clusters
	// that make a volume FAT32.
	ClusterSize int
}

// Header describes one entry. Name is slash separated and relative to the
// root ("EFI/BOOT/BOOTX64.EFI").
type Header struct {
	Name string
	// Mode only matters for regular files: without any write bit the file
	// gets the read-only attribute, so pass 0o644 for files copied from the
	// read-only Nix store. (On directories Windows reads that bit as
	// "customised folder", so it is never set there.)
	Mode  fs.FileMode
	Mtime int64 // unix seconds: creation, write and access time
	Size  int64 // regular files: exact byte count that will be written, < 4 GiB
}

var (
	ErrWriteTooLong  = errors.New("fat: write beyond the size in the header")
	ErrWriteTooShort = errors.New("fat: file has fewer bytes than its header size")
	// ErrFull is wrapped by every "filesystem full" error.
	ErrFull   = errors.New("fat: filesystem full")
	errClosed = errors.New("fat: writer closed")
)

const (
	sectorSize  = fatspec.SectorSize
	reserved    = 32 // sectors before the first FAT, as mkfs.fat uses for FAT32
	numFATs     = 2
	fsInfoSec   = 1
	backupSec   = 6
	minClusters = 65525 // fewer and every reader takes the volume for FAT12/16
	rootCluster = 2
	eoc         = fatspec.EndOfChain
	chunk       = 1 << 20 // FAT and data staging
)

// geometry is the layout derived from Options.
type geometry struct {
	sectors    uint32 // total
	spc        uint32 // sectors per cluster
	fatSectors uint32 // per FAT
	clusters   uint32 // data clusters: numbers 2 .. clusters+1
}

func (g *geometry) clusterSize() int64 { return int64(g.spc) * sectorSize }
func (g *geometry) fatOffset(i int) int64 {
	return int64(reserved+uint32(i)*g.fatSectors) * sectorSize
}
func (g *geometry) clusterOffset(c uint32) int64 {
	return g.fatOffset(numFATs) + int64(c-2)*g.clusterSize()
}

// layout sizes the FATs for sectors and spc: the smallest FAT that maps
// every cluster left after it, grown so the data area starts on a cluster
// boundary (mkfs.fat aligns likewise; 4 KiB clusters then sit on 4 KiB).
func layout(sectors int64, spc uint32) (fatSectors uint32, clusters int64) {
	fat := int64(1)
	for {
		clusters = max(sectors-reserved-numFATs*fat, 0) / int64(spc)
		need := ((clusters+2)*4 + sectorSize - 1) / sectorSize
		if need <= fat {
			break
		}
		fat = need
	}
	for (reserved+numFATs*fat)%int64(spc) != 0 {
		fat++
	}
	clusters = max(sectors-reserved-numFATs*fat, 0) / int64(spc)
	return uint32(fat), clusters
}

// defaultClusterSize follows the FAT32 table of Microsoft's specification,
// which mkfs.fat also uses.
func defaultClusterSize(size int64) int {
	switch {
	case size <= 260<<20:
		return 512
	case size <= 8<<30:
		return 4096
	case size <= 16<<30:
		return 8192
	case size <= 32<<30:
		return 16384
	}
	return 32768
}

// MinSize is the smallest filesystem size for clusterSize (0 means 512, the
// smallest possible) that still has the 65525 clusters FAT32 needs: about
// 32.5 MiB at 512 B clusters, 64.5 MiB at 1 KiB, 256.5 MiB at 4 KiB.
func MinSize(clusterSize int) int64 {
	if clusterSize == 0 {
		clusterSize = sectorSize
	}
	spc := uint32(clusterSize / sectorSize)
	// The FAT for exactly minClusters, then as many sectors as layout needs.
	fat := int64((minClusters+2)*4+sectorSize-1) / sectorSize
	s := reserved + numFATs*fat + minClusters*int64(spc)
	for {
		if _, c := layout(s, spc); c >= minClusters {
			return s * sectorSize
		}
		s++
	}
}

func newGeometry(size int64, clusterSize int) (*geometry, error) {
	sectors := size / sectorSize
	if sectors > 1<<32-1 {
		return nil, fmt.Errorf("fat: size %d exceeds FAT32's 2 TiB", size)
	}
	cs := clusterSize
	if cs == 0 {
		cs = defaultClusterSize(size) // always leaves enough clusters
	} else if cs < sectorSize || cs > 32768 || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("fat: cluster size %d is not a power of two from 512 to 32768", cs)
	}
	spc := uint32(cs / sectorSize)
	fatSectors, clusters := layout(sectors, spc)
	switch {
	case clusters > fatspec.MaxClusters:
		return nil, fmt.Errorf("fat: %d clusters of %d bytes exceed FAT32's %d; use larger clusters", clusters, cs, fatspec.MaxClusters)
	case clusters < minClusters && cs > sectorSize:
		return nil, fmt.Errorf("fat: %d bytes give %d clusters of %d bytes; FAT32 needs %d, so at least %d bytes (%d with 512-byte clusters)",
			size, clusters, cs, minClusters, MinSize(cs), MinSize(sectorSize))
	case clusters < minClusters:
		return nil, fmt.Errorf("fat: %d bytes give %d clusters; FAT32 needs %d, so at least %d bytes", size, clusters, minClusters, MinSize(cs))
	}
	return &geometry{sectors: uint32(sectors), spc: spc, fatSectors: fatSectors, clusters: uint32(clusters)}, nil
}

// run is a contiguous piece of a cluster chain.
type run struct {
	start, n uint32
	next     uint32 // FAT value of the run's last cluster: the next run's start, or eoc
}

// Writer streams a FAT32 filesystem into f[offset:offset+Size].
type Writer struct {
	f      *os.File
	off    int64
	opts   Options
	label  [11]byte
	g      *geometry
	zeroed bool // the range reads as zeros, so zero bytes need not be written

	next uint32 // first cluster not yet handed out
	runs []run  // sorted by start: the cursor only moves forward

	dirs map[string]*dir
	all  []*dir // creation order, root first
	cur  *file

	err    error
	closed bool
	buf    []byte
}

// NewWriter starts a filesystem at f[offset:offset+opts.Size]. offset must
// be a multiple of 512; it is also recorded as the hidden-sector count, which
// is right when f is the whole disk and offset the partition's start. The
// range is hole-punched where the filesystem supports it, so that unused
// space stays sparse; elsewhere NewWriter writes the zeros it relies on.
func NewWriter(f *os.File, offset int64, opts Options) (*Writer, error) {
	label, err := volumeLabel(opts.Label)
	if err != nil {
		return nil, err
	}
	if offset < 0 || offset%sectorSize != 0 {
		return nil, fmt.Errorf("fat: offset %d not a multiple of %d", offset, sectorSize)
	}
	g, err := newGeometry(opts.Size, opts.ClusterSize)
	if err != nil {
		return nil, err
	}
	size := int64(g.sectors) * sectorSize
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() < offset+size {
		return nil, fmt.Errorf("fat: %s is %d bytes, need %d for the filesystem at offset %d", f.Name(), st.Size(), offset+size, offset)
	}
	w := &Writer{
		f:     f,
		off:   offset,
		opts:  opts,
		label: label,
		g:     g,
		next:  rootCluster + 1,
		runs:  []run{{start: rootCluster, n: 1, next: eoc}},
		buf:   make([]byte, chunk),
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, offset, size)
	switch {
	case err == nil:
		w.zeroed = true
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENODEV):
	default:
		return nil, fmt.Errorf("fat: punching hole: %w", err)
	}
	root := &dir{mtime: opts.Time, keys: map[string]bool{}}
	w.dirs = map[string]*dir{"": root}
	w.all = []*dir{root}
	return w, nil
}

func (w *Writer) usable() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errClosed
	}
	return nil
}

// fail records a fatal error: the image is inconsistent from here on.
func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

// enter finishes the previous file, validates name and returns its parent
// directory and base name. Nothing is changed if it fails.
func (w *Writer) enter(name string) (*dir, string, error) {
	if err := w.usable(); err != nil {
		return nil, "", err
	}
	if w.cur != nil {
		if err := w.cur.complete(); err != nil {
			return nil, "", w.fail(err)
		}
		w.cur = nil
	}
	if name == "" {
		return nil, "", errors.New("fat: empty name")
	}
	for _, c := range strings.Split(name, "/") {
		if err := validName(c); err != nil {
			return nil, "", fmt.Errorf("fat: %q: %w", name, err)
		}
	}
	parent, base := path.Split(name)
	parent = strings.TrimSuffix(parent, "/")
	d := w.dirs[parent]
	if d == nil {
		return nil, "", fmt.Errorf("fat: %q: parent directory %q was not created", name, parent)
	}
	if d.keys[foldKey(base)] {
		return nil, "", fmt.Errorf("fat: duplicate entry %q (FAT names are case-insensitive)", name)
	}
	return d, base, nil
}

// Mkdir adds a directory.
func (w *Writer) Mkdir(h Header) error {
	parent, base, err := w.enter(h.Name)
	if err != nil {
		return err
	}
	d := &dir{path: h.Name, parent: parent, mtime: h.Mtime, keys: map[string]bool{}}
	parent.add(dirent{name: base, attr: fatspec.AttrDir, mtime: h.Mtime, sub: d})
	w.dirs[h.Name] = d
	w.all = append(w.all, d)
	return nil
}

// alloc hands out n contiguous clusters as one chain.
func (w *Writer) alloc(n uint32) (uint32, error) {
	if free := w.free(); n > free {
		return 0, fmt.Errorf("%w: need %d clusters of %d bytes, %d free", ErrFull, n, w.g.clusterSize(), free)
	}
	start := w.next
	w.runs = append(w.runs, run{start: start, n: n, next: eoc})
	w.next += n
	return start, nil
}

func (w *Writer) free() uint32 { return w.g.clusters + 2 - w.next }

func (w *Writer) writeAt(b []byte, off int64) error {
	if _, err := w.f.WriteAt(b, w.off+off); err != nil {
		return fmt.Errorf("fat: write: %w", err)
	}
	return nil
}

// Close writes the directories, the FATs, FSInfo and the boot sectors. It
// does not close or sync f.
func (w *Writer) Close() error {
	if err := w.usable(); err != nil {
		return err
	}
	if w.cur != nil {
		if err := w.cur.complete(); err != nil {
			return w.fail(err)
		}
		w.cur = nil
	}
	if err := w.writeDirs(); err != nil {
		return w.fail(err)
	}
	if err := w.writeFATs(); err != nil {
		return w.fail(err)
	}
	if err := w.writeBoot(); err != nil {
		return w.fail(err)
	}
	w.closed = true
	return nil
}

// writeFATs generates both FATs from the runs. Entries past the cursor are
// free (zero) and, on a zeroed range, are not written.
func (w *Writer) writeFATs() error {
	end := int64(w.g.fatSectors) * sectorSize
	if w.zeroed {
		end = min(end, (int64(w.next)*4+sectorSize-1)/sectorSize*sectorSize)
	}
	ri := 0
	for base := int64(0); base < end; base += chunk {
		b := w.buf[:min(chunk, end-base)]
		clear(b)
		first := uint32(base / 4)
		last := first + uint32(len(b)/4) // exclusive
		put := func(c, v uint32) { binary.LittleEndian.PutUint32(b[(c-first)*4:], v) }
		if first == 0 {
			put(0, 0x0FFFFF00|mediaFixed)
			put(1, eoc) // also fatspec.CleanBits: cleanly unmounted, no I/O errors
		}
		for ri < len(w.runs) && w.runs[ri].start < last {
			r := w.runs[ri]
			lo, hi := max(r.start, first), min(r.start+r.n, last)
			for c := lo; c < hi; c++ {
				if c == r.start+r.n-1 {
					put(c, r.next)
				} else {
					put(c, c+1)
				}
			}
			if r.start+r.n > last {
				break // the run continues in the next piece
			}
			ri++
		}
		for i := range numFATs {
			if err := w.writeAt(b, w.g.fatOffset(i)+base); err != nil {
				return err
			}
		}
	}
	return nil
}

const mediaFixed = 0xF8

// writeBoot writes the boot sector and FSInfo and their backups.
func (w *Writer) writeBoot() error {
	g := w.g
	b := make([]byte, 2*sectorSize)
	bs, fi := b[:sectorSize], b[sectorSize:]
	le := binary.LittleEndian

	copy(bs[fatspec.BootJump:], []byte{0xEB, 0x58, 0x90})           // jmp to the boot code at 0x5A
	copy(bs[fatspec.BootOEMName:fatspec.BootOEMName+8], "MSWIN4.1") // the OEM name the spec recommends
	le.PutUint16(bs[fatspec.BootBytesPerSector:], sectorSize)
	bs[fatspec.BootSectorsPerCluster] = byte(g.spc)
	le.PutUint16(bs[fatspec.BootReservedSectors:], reserved)
	bs[fatspec.BootNumFATs] = numFATs
	// Root entries, the 16-bit sector count and the 16-bit FAT size: 0 on FAT32.
	bs[fatspec.BootMedia] = mediaFixed
	le.PutUint16(bs[fatspec.BootSectorsPerTrack:], 32) // CHS geometry mkfs.fat uses for files; unused by LBA readers
	le.PutUint16(bs[fatspec.BootHeads:], 64)
	le.PutUint32(bs[fatspec.BootHiddenSectors:], uint32(w.off/sectorSize))
	le.PutUint32(bs[fatspec.BootTotalSectors32:], g.sectors)
	le.PutUint32(bs[fatspec.BootFATSize32:], g.fatSectors)
	// Flags 0 = FATs mirrored; version 0.0.
	le.PutUint32(bs[fatspec.BootRootCluster:], rootCluster)
	le.PutUint16(bs[fatspec.BootFSInfoSector:], fsInfoSec)
	le.PutUint16(bs[fatspec.BootBackupSector:], backupSec)
	bs[fatspec.BootDriveNumber] = 0x80  // hard disk
	bs[fatspec.BootExtSignature] = 0x29 // the next three fields are valid
	le.PutUint32(bs[fatspec.BootVolumeID:], w.opts.VolumeID)
	copy(bs[fatspec.BootVolumeLabel:fatspec.BootVolumeLabel+11], w.label[:])
	copy(bs[fatspec.BootFSType:fatspec.BootFSType+8], "FAT32   ")
	// Boot code: not bootable, so ask the BIOS for the next device (int 18h)
	// and halt if it returns.
	copy(bs[fatspec.BootCode:], []byte{0xCD, 0x18, 0xF4, 0xEB, 0xFD})
	fatspec.SetBootSignature(bs)

	fatspec.SetFSInfoSignatures(fi)
	le.PutUint32(fi[fatspec.FSInfoFreeCount:], w.free())
	nextFree := uint32(fatspec.FSInfoUnknown) // there is none
	if w.free() > 0 {
		nextFree = w.next
	}
	le.PutUint32(fi[fatspec.FSInfoNextFree:], nextFree)

	if !w.zeroed {
		if err := w.writeAt(make([]byte, reserved*sectorSize), 0); err != nil {
			return err
		}
	}
	if err := w.writeAt(b, backupSec*sectorSize); err != nil {
		return err
	}
	// The primary last: a crash before this leaves no valid filesystem.
	return w.writeAt(b, 0)
}
