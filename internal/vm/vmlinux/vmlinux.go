// Package vmlinux takes the ELF kernel out of a system's bzImage, so QEMU
// can start it at its PVH entry point: under TCG the bzImage's own
// decompressor (xz for Debian's kernels) is emulated instruction by
// instruction and takes seconds, which the host does in a fraction of
// that. The kernel that runs is the same; only who unpacks it changes.
//
// The bzImage is the system's, bytes we did not write: every offset and
// size in its header is checked against the file, the output is bounded
// by what the header says the kernel needs (and a fixed limit), and it
// must decompress to exactly the size the kernel build appended and to
// an x86-64 ELF executable with a PVH entry note. Anything else is an
// error, and the caller boots the bzImage as before.
package vmlinux

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/xi2/xz"
)

// maxSize bounds the decompressed kernel: x86-64 kernels are tens of MiB
// (Debian's 6.1 is 63 MiB, init_size 83 MiB); 512 MiB is far beyond any.
const maxSize = 512 << 20

// maxDict bounds an xz or zstd dictionary, so memory stays bounded
// whatever the payload's header claims (the kernel build uses 32 MiB).
const maxDict = 64 << 20

// Setup header fields (Documentation/arch/x86/boot.rst).
const (
	offSetupSects = 0x1f1
	offMagic      = 0x202 // "HdrS"
	offVersion    = 0x206
	offPayloadOff = 0x248 // protocol 2.08+, from the protected-mode code
	offPayloadLen = 0x24c
	offInitSize   = 0x260 // protocol 2.10+
	headerEnd     = 0x264
	minVersion    = 0x20a
)

// xenNotePVHEntry is XEN_ELFNOTE_PHYS32_ENTRY: the note QEMU looks for
// to boot an ELF kernel through PVH.
const xenNotePVHEntry = 18

// Extract writes the ELF kernel inside bzImage src to dst. An error means
// the kernel cannot be booted that way: boot src itself.
func Extract(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	off, length, limit, err := payload(f, fi.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	// The build appends the decompressed size (le32) to every payload.
	var sz [4]byte
	if _, err := f.ReadAt(sz[:], off+length-4); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	want := int64(binary.LittleEndian.Uint32(sz[:]))
	if want == 0 || want > limit {
		return fmt.Errorf("%s: the payload says it decompresses to %d bytes; the header allows %d", src, want, limit)
	}
	r, err := decompressor(bufioReader(f, off, length-4))
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if err := write(dst, io.LimitReader(r, want+1), want); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if err := checkPVH(dst); err != nil {
		os.Remove(dst)
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}

// payload checks the setup header and returns where the compressed
// kernel lies in the file and how large its output may be.
func payload(f io.ReaderAt, size int64) (off, length, limit int64, err error) {
	var h [headerEnd]byte
	if size < headerEnd {
		return 0, 0, 0, errors.New("too small for a bzImage")
	}
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return 0, 0, 0, err
	}
	le := binary.LittleEndian
	if string(h[offMagic:offMagic+4]) != "HdrS" {
		return 0, 0, 0, errors.New("not a bzImage (no HdrS)")
	}
	if v := le.Uint16(h[offVersion:]); v < minVersion {
		return 0, 0, 0, fmt.Errorf("boot protocol %#x predates the payload fields (%#x)", v, minVersion)
	}
	sects := int64(h[offSetupSects])
	if sects == 0 {
		sects = 4
	}
	// All int64 from 8-bit and 32-bit fields: no sum below can overflow.
	off = (sects+1)*512 + int64(le.Uint32(h[offPayloadOff:]))
	length = int64(le.Uint32(h[offPayloadLen:]))
	if length < 8 || off+length > size {
		return 0, 0, 0, fmt.Errorf("payload [%d, +%d) is not inside the %d-byte file", off, length, size)
	}
	limit = min(int64(le.Uint32(h[offInitSize:])), maxSize)
	return off, length, limit, nil
}

func bufioReader(f io.ReaderAt, off, n int64) *bufio.Reader {
	return bufio.NewReaderSize(io.NewSectionReader(f, off, n), 1<<20)
}

// decompressor picks the payload's format by its magic: gzip, xz (with
// the x86 BCJ filter the kernel build uses) and zstd, the formats x86
// kernels are commonly built with.
func decompressor(r *bufio.Reader) (io.Reader, error) {
	magic, _ := r.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(r)
	case bytes.Equal(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		// xi2/xz (XZ Embedded in Go) has the x86 BCJ filter the kernel
		// build applies before LZMA2; ulikunitz/xz has none.
		z, err := xz.NewReader(r, maxDict)
		if err != nil {
			return nil, err
		}
		z.Multistream(false) // the payload is one stream, then the size the build appended
		return z, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxDict), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}
	return nil, fmt.Errorf("payload compressed in a format not unpacked here (magic % x)", magic)
}

// write copies exactly want bytes from r to a new file dst.
func write(dst string, r io.Reader, want int64) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(out, r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != want {
		err = fmt.Errorf("payload decompressed to %d bytes, the build recorded %d", n, want)
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

// checkPVH accepts an x86-64 ELF executable with a Xen PHYS32_ENTRY
// note, which QEMU needs to boot it (and refuses it without).
func checkPVH(path string) error {
	e, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("decompressed kernel: %w", err)
	}
	defer e.Close()
	if e.Class != elf.ELFCLASS64 || e.Machine != elf.EM_X86_64 || e.Type != elf.ET_EXEC {
		return fmt.Errorf("decompressed kernel is not an x86-64 ELF executable (%v %v %v)", e.Class, e.Machine, e.Type)
	}
	for _, p := range e.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		// Notes are small: a kernel's are a few hundred bytes.
		if p.Filesz > 1<<16 {
			return fmt.Errorf("decompressed kernel: a %d-byte note segment", p.Filesz)
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return fmt.Errorf("decompressed kernel: %w", err)
		}
		if hasPVHNote(b) {
			return nil
		}
	}
	return errors.New("the kernel has no PVH entry (CONFIG_PVH is off)")
}

// hasPVHNote walks ELF notes: namesz, descsz, type, name, desc, each
// padded to 4 bytes.
func hasPVHNote(b []byte) bool {
	le := binary.LittleEndian
	for len(b) >= 12 {
		namesz, descsz, typ := uint64(le.Uint32(b)), uint64(le.Uint32(b[4:])), le.Uint32(b[8:])
		name := (namesz + 3) &^ 3
		desc := (descsz + 3) &^ 3
		if 12+name+desc > uint64(len(b)) {
			return false
		}
		if typ == xenNotePVHEntry && string(b[12:12+namesz]) == "Xen\x00" && descsz >= 4 {
			return true
		}
		b = b[12+name+desc:]
	}
	return false
}
