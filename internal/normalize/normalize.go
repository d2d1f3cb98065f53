// Package normalize makes disk images someone else wrote byte-identical
// across rebuilds of the same inputs: the partition table's GUIDs and MBR
// signature, the ext4 and FAT filesystems' history (times, generations,
// journal, FSInfo hints), an installed root's files, and a container
// format's UUIDs and time stamps. It joins the readers below it, one per
// layer, each of which treats every byte it reads as untrusted;
// nixos-reproducible, nixos-convert and the builder share it.
package normalize

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/container"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/fat"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/partition"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize/rootfiles"
)

// Options say what invented values become.
type Options struct {
	// Seed derives every GUID and UUID written; nil derives it from the
	// image's content once the rest is normalised (same image, same
	// identifiers; different images, different ones).
	Seed []byte
	Time int64 // unix seconds: time stamps are clamped to it
	// RederiveIDs replaces the partition table's disk and partition GUIDs
	// and MBR signature with ones derived from the seed. It breaks what
	// refers to them (root=PARTUUID=, /dev/disk/by-partuuid in fstab, a
	// boot entry in EFI variables): by default they are kept.
	RederiveIDs bool
}

// Epoch is source_date_epoch as users give it: the key's value, else the
// SOURCE_DATE_EPOCH environment variable, else 1 (the Nix store's time).
func Epoch(key *int64) (int64, error) {
	e := int64(1)
	if key != nil {
		e = *key
	} else if env := os.Getenv("SOURCE_DATE_EPOCH"); env != "" {
		v, err := strconv.ParseInt(env, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("source_date_epoch: the SOURCE_DATE_EPOCH environment variable %q is not a whole number of seconds", env)
		}
		e = v
	}
	if e < 0 || e > 1<<32-1 {
		return 0, fmt.Errorf("source_date_epoch: %d is outside 0..4294967295", e)
	}
	return e, nil
}

// ContentSeed digests the file's logical content with base, so that
// different images get different container UUIDs (VirtualBox refuses to
// register two disks with one UUID) and the same image the same. It
// depends on the bytes alone, not on how the host stores them: the file is
// cut into aligned chunks, those without data (holes, so a sparse 100 GiB
// image costs what its data costs) and those of zeros count alike, and
// only the others are hashed, in parallel, one worker a CPU, their digests
// combined in file order; memory stays at a few chunks.
func ContentSeed(path string, base []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// The chunks holding any data, in order.
	var chunks []int64
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return nil, err
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		for c := data / seedChunk * seedChunk; c < hole; c += seedChunk {
			if len(chunks) == 0 || chunks[len(chunks)-1] != c {
				chunks = append(chunks, c)
			}
		}
		off = hole
	}

	sums := make([][sha256.Size]byte, len(chunks))
	zero := make([]bool, len(chunks))
	errs := make([]error, len(chunks))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for i := range next {
				h := sha256.New()
				z := true
				r := io.NewSectionReader(f, chunks[i], min(seedChunk, fi.Size()-chunks[i]))
				for {
					n, err := r.Read(buf)
					z = z && isZero(buf[:n])
					h.Write(buf[:n])
					if err == io.EOF {
						break
					}
					if err != nil {
						errs[i] = err
						break
					}
				}
				h.Sum(sums[i][:0])
				zero[i] = z
			}
		}()
	}
	for i := range chunks {
		next <- i
	}
	close(next)
	wg.Wait()

	h := sha256.New()
	h.Write(base)
	h.Write([]byte{0})
	var num [8]byte
	for i, c := range chunks {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if zero[i] {
			continue // as a hole
		}
		binary.LittleEndian.PutUint64(num[:], uint64(c))
		h.Write(num[:])
		h.Write(sums[i][:])
	}
	binary.LittleEndian.PutUint64(num[:], uint64(fi.Size()))
	h.Write(num[:])
	return h.Sum(nil), nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// seedChunk is the unit ContentSeed hashes in parallel.
const seedChunk = 16 << 20

// Container normalises the header of a vpc, vdi, vhdx or vmdk file (raw and
// qcow2 have nothing to normalise) and says what it changed.
func Container(path string, o Options) ([]string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	line, err := normalizeContainer(f, o)
	if err != nil {
		return nil, err
	}
	return []string{line}, nil
}

// normalizeContainer rewrites f's container header and syncs it.
func normalizeContainer(f *os.File, o Options) (string, error) {
	rep, err := container.Normalize(f, container.Options{Seed: o.Seed, Time: o.Time})
	if err != nil {
		return "", fmt.Errorf("normalising the %s header: %w", f.Name(), err)
	}
	return containerLine(rep), f.Sync()
}

func containerLine(rep container.Report) string {
	if len(rep.Fields) == 0 {
		return fmt.Sprintf("%s container: nothing to change", rep.Format)
	}
	return fmt.Sprintf("%s container: %s", rep.Format, strings.Join(rep.Fields, ", "))
}

// Image normalises a disk image in place: a raw image layer by layer
// (partition table, then each ext4 or FAT32 filesystem), another format's
// container header only. It returns one line per layer saying what
// changed, and what it left alone and why. Cancelling ctx closes the image
// under the scan, which then stops at its next read; what it wrote stays
// (Rewrite works on a copy for that reason).
func Image(ctx context.Context, path string, o Options) ([]string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	lines, err := image(f, path, o)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("normalising %s: %w", path, ctx.Err())
	}
	return lines, err
}

// placeholderSeed stands in for a seed derived from content while the
// content it derives from is made: identifiers written with it are
// rewritten once the seed is known.
var placeholderSeed = []byte("nixos-reproducible placeholder")

func image(f *os.File, path string, o Options) ([]string, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	format, err := container.Detect(f, fi.Size())
	if err != nil {
		return nil, err
	}
	if format != container.Raw {
		if o.Seed == nil {
			if _, err := normalizeContainer(f, Options{Seed: placeholderSeed, Time: o.Time}); err != nil {
				return nil, err
			}
			if o.Seed, err = ContentSeed(path, []byte("nixos-reproducible container")); err != nil {
				return nil, err
			}
		}
		line, err := normalizeContainer(f, o)
		if err != nil {
			return nil, err
		}
		return []string{line, fmt.Sprintf("left alone: the filesystems inside a %s image (nixos-reproducible rewrites them in raw images: put it before nixos-convert)", format)}, nil
	}

	var lines []string
	seed := o.Seed
	if seed == nil {
		seed = placeholderSeed
	}
	pt, err := partition.Normalize(f, partition.NormalizeOptions{Seed: seed, RederiveIDs: o.RederiveIDs})
	if err != nil {
		return nil, err
	}
	parts := pt.Partitions // checked by the same plan Normalize wrote from
	if pt.Table == "none" {
		parts = []partition.Extent{{Number: 0, Start: 0, Size: fi.Size()}}
	}
	for _, p := range parts {
		name := fmt.Sprintf("partition %d", p.Number)
		if p.Number == 0 {
			name = "filesystem"
		}
		l, err := filesystem(f, p.Start, p.Size, name, o)
		if err != nil {
			return nil, err
		}
		lines = append(lines, l)
	}
	if o.Seed == nil && o.RederiveIDs && pt.Table != "none" {
		// The identifiers derive from everything else, now settled.
		if err := f.Sync(); err != nil {
			return nil, err
		}
		if seed, err = ContentSeed(path, []byte("nixos-reproducible partition table")); err != nil {
			return nil, err
		}
		if pt, err = partition.Normalize(f, partition.NormalizeOptions{Seed: seed, RederiveIDs: o.RederiveIDs}); err != nil {
			return nil, err
		}
	}
	lines = append([]string{tableLine(pt)}, lines...)
	return lines, f.Sync()
}

func tableLine(pt partition.NormalizeReport) string {
	switch {
	case pt.Table == "none":
		return "partition table: none (a bare filesystem)"
	case len(pt.Fields) == 0:
		return fmt.Sprintf("partition table (%s): nothing to change", pt.Table)
	}
	return fmt.Sprintf("partition table (%s): %s", pt.Table, strings.Join(pt.Fields, ", "))
}

// filesystem normalises the filesystem at off, if it is one we know; it
// owns the size bytes there (its partition) and nothing else.
func filesystem(f *os.File, off, size int64, name string, o Options) (string, error) {
	head := make([]byte, 2048)
	if _, err := f.ReadAt(head, off); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	switch {
	case binary.LittleEndian.Uint16(head[1024+56:]) == 0xEF53:
		opts := ext4.NormalizeOptions{Time: o.Time, Clamp: true}
		// A first pass checks the layout is one Normalize knows before
		// any file inside is touched; the second clears what debugfs'
		// edits left (times, the removed machine-id's inode).
		r, err := ext4.Normalize(f, off, size, opts)
		if err != nil {
			return fmt.Sprintf("left alone: %s (ext4): %v", name, err), nil
		}
		files, err := rootfiles.Settle(f, off, size, o.Time)
		if err != nil {
			return "", fmt.Errorf("%s (ext4): %w", name, err)
		}
		if len(files) > 0 {
			if _, err := ext4.Normalize(f, off, size, opts); err != nil {
				return "", fmt.Errorf("%s (ext4) after editing its files: %w", name, err)
			}
		}
		l := fmt.Sprintf("%s (ext4): %d of %d inodes' times, %d generations, %d versions", name, r.TimesChanged, r.Inodes, r.GenerationsZeroed, r.VersionsZeroed)
		if r.JournalCleared {
			l += ", journal cleared"
		}
		if len(r.SuperblockFields) > 0 {
			l += ", superblock " + strings.Join(r.SuperblockFields, " ")
		}
		if len(files) > 0 {
			l += "; " + strings.Join(files, ", ")
		}
		return l + "; UUID and hash seed kept (the system refers to them)", nil
	case bytes.Equal(head[82:90], []byte("FAT32   ")):
		r, err := fat.Normalize(f, off, size, fat.NormalizeOptions{Time: o.Time})
		if err != nil {
			return fmt.Sprintf("left alone: %s (FAT32): %v", name, err), nil
		}
		l := fmt.Sprintf("%s (FAT32): %d of %d entries' times, %d free slots and %d free clusters cleared", name, r.TimesChanged, r.Entries, r.Cleared, r.FreeCleared)
		if r.FSInfoFixed {
			l += ", FSInfo"
		}
		if r.BootFixed {
			l += ", boot sector"
		}
		return l + "; volume ID kept (the system refers to it)", nil
	}
	return fmt.Sprintf("left alone: %s: not ext4 or FAT32", name), nil
}
