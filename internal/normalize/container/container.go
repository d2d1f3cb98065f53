// Package container makes the container headers of disk images written by
// `qemu-img convert` reproducible: it rewrites, in place, the header and
// metadata fields that qemu-img fills from the clock or from randomness,
// deriving them from a caller-supplied seed and time instead, and recomputes
// every checksum covering them. Guest data is never touched.
//
// What qemu-img 7.2 leaves non-deterministic (found by converting one raw
// image twice and diffing), per format:
//
//   - raw, qcow2: nothing. qcow2 output, plain and compressed (-c with
//     compression_type=zlib or zstd), is byte-identical across runs with the
//     default options, whatever -m says, because convert writes clusters in
//     guest order. Never pass -W (out-of-order writes): it makes the cluster
//     allocation order, and with it the file, differ from run to run in every
//     format, and no header rewrite can repair that.
//   - vpc: the footer's timestamp and unique id (the footer is at the end of
//     the file and, for dynamic disks, copied at offset 0), and its checksum.
//   - vdi: the image and last-snapshot UUIDs.
//   - vhdx: both headers' sequence numbers (random base), file and data
//     write GUIDs and checksums; the virtual disk id in the metadata region;
//     and the GUID and checksum of every stale log entry (qemu logs each BAT
//     update, replays it, and leaves the entries behind).
//   - vmdk (monolithicSparse, streamOptimized): the CID in the embedded
//     descriptor, which qemu prints without zero padding, so the descriptor
//     text also shifts by a few bytes and may leave stale bytes after its
//     terminating NUL. The descriptor's extent line names the file qemu-img
//     wrote, so convert to the same base name every time.
package container

import (
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Format is a container format, as qemu-img names it.
type Format string

const (
	Raw   Format = "raw"
	QCOW2 Format = "qcow2"
	VDI   Format = "vdi"
	VPC   Format = "vpc"
	VHDX  Format = "vhdx"
	VMDK  Format = "vmdk"
)

// Detect tells the format of an image of the given size from its magic bytes;
// anything it does not recognise is raw.
func Detect(r io.ReaderAt, size int64) (Format, error) {
	head := make([]byte, 512)
	n, err := r.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		return QCOW2, nil
	case bytes.HasPrefix(head, []byte("vhdxfile")):
		return VHDX, nil
	case bytes.HasPrefix(head, []byte("KDMV")):
		return VMDK, nil
	case len(head) >= 68 && binary.LittleEndian.Uint32(head[64:]) == vdiSignature:
		return VDI, nil
	case bytes.HasPrefix(head, []byte(vpcCookie)):
		return VPC, nil
	}
	// A fixed VHD is raw data followed by nothing but the footer.
	if size >= 2*512 {
		tail := make([]byte, len(vpcCookie))
		if _, err := r.ReadAt(tail, size-512); err != nil {
			return "", err
		}
		if string(tail) == vpcCookie {
			return VPC, nil
		}
	}
	return Raw, nil
}

// Options says what the normalised fields become.
type Options struct {
	// Seed determines every UUID, GUID and random number written, as RFC 4122
	// version 5 UUIDs over the seed and the field's role. It must identify
	// the image (a digest of the raw image, say): images built with the same
	// seed share their UUIDs, and VirtualBox, for one, refuses to register
	// two disks with the same UUID.
	Seed []byte
	// Time is written, as Unix seconds, to every timestamp field.
	Time int64
}

// Report says what Normalize changed.
type Report struct {
	Format Format
	// Fields names the fields whose bytes changed, e.g. "vpc footer
	// timestamp"; empty when the file was already normalised.
	Fields []string
}

// Normalize detects the format of f and rewrites its clock- and
// randomness-derived header fields in place. It parses and verifies every
// structure it is going to touch before writing anything, and refuses (with
// nothing written) a file whose headers it cannot parse or whose checksums
// are wrong. What it writes must lie inside the structure that holds it
// and apart from everything else the format locates (a vhdx log apart from
// the header section, every region and every block the BAT points at; a
// vmdk descriptor before its grain directories and first grain), or the
// file is left alone. Memory is bounded by the file and by vhdxMaxLog,
// vhdxMaxBAT (read in chunks) and vmdkMaxDesc. Running it again with the
// same options changes nothing.
func Normalize(f *os.File, o Options) (Report, error) {
	if len(o.Seed) == 0 {
		return Report{}, errors.New("container: Options.Seed is empty")
	}
	fi, err := f.Stat()
	if err != nil {
		return Report{}, err
	}
	img := &image{f: f, size: fi.Size()}
	format, err := Detect(f, img.size)
	if err != nil {
		return Report{}, fmt.Errorf("container: %s: %w", f.Name(), err)
	}
	rep := Report{Format: format}
	d := &deriver{seed: o.Seed, renamed: map[[16]byte][16]byte{}}
	var regions []*region
	switch format {
	case VPC:
		regions, err = vpcNormalize(img, d, o.Time)
	case VDI:
		regions, err = vdiNormalize(img, d)
	case VHDX:
		regions, err = vhdxNormalize(img, d)
	case VMDK:
		regions, err = vmdkNormalize(img, d)
	}
	if err != nil {
		return rep, fmt.Errorf("container: %s: %s: %w", f.Name(), format, err)
	}
	seen := map[string]bool{}
	wrote := false
	for _, r := range regions {
		for _, name := range r.fields {
			if !seen[name] {
				seen[name] = true
				rep.Fields = append(rep.Fields, name)
			}
		}
		n, err := r.write(f)
		if err != nil {
			return rep, fmt.Errorf("container: %s: %w", f.Name(), err)
		}
		wrote = wrote || n > 0
	}
	if wrote {
		if err := f.Sync(); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// image reads bounded ranges of the file being normalised.
type image struct {
	f    *os.File
	size int64
}

func (m *image) read(off, n int64, what string) ([]byte, error) {
	if off < 0 || n < 0 || off > m.size || n > m.size-off {
		return nil, fmt.Errorf("%s at offset %d (%d bytes) lies beyond the end of the %d-byte file", what, off, n, m.size)
	}
	b := make([]byte, n)
	if _, err := m.f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return b, nil
}

// region is a copy of some bytes of the file, edited in memory and written
// back only where it changed.
type region struct {
	off    int64
	orig   []byte
	buf    []byte
	fields []string
}

func newRegion(off int64, b []byte) *region {
	return &region{off: off, orig: b, buf: bytes.Clone(b)}
}

// set overwrites buf[at:] with v, noting field if that changed anything.
func (r *region) set(at int, v []byte, field string) {
	if !bytes.Equal(r.buf[at:at+len(v)], v) {
		copy(r.buf[at:], v)
		r.fields = append(r.fields, field)
	}
}

// write writes back the 4 KiB chunks that changed, so a large region (the
// VHDX log) costs only the pages actually edited.
func (r *region) write(w io.WriterAt) (int, error) {
	const chunk = 4096
	n := 0
	for at := 0; at < len(r.buf); at += chunk {
		end := min(at+chunk, len(r.buf))
		if bytes.Equal(r.orig[at:end], r.buf[at:end]) {
			continue
		}
		if _, err := w.WriteAt(r.buf[at:end], r.off+int64(at)); err != nil {
			return n, err
		}
		n += end - at
	}
	return n, nil
}

// deriver makes the seed-derived replacements for random values.
type deriver struct {
	seed []byte
	// renamed maps each random GUID met to its replacement, so that fields
	// qemu gave equal values (a VHDX session GUID in both headers, the two
	// copies of a VHD footer) stay equal and distinct ones stay distinct.
	renamed map[[16]byte][16]byte
}

// namespace is this package's RFC 4122 namespace: the version 5 UUID of its
// first import path in the URL namespace. The name is frozen: every UUID
// the package derives depends on it, so it must not follow a move.
var namespace = uuid5([16]byte{0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8},
	[]byte("https://github.com/packer-plugin-nixos/packer-plugin-nixos/builder/container"))

func uuid5(ns [16]byte, name []byte) [16]byte {
	h := sha1.New()
	h.Write(ns[:])
	h.Write(name)
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u
}

// uuid derives the UUID for role, in RFC 4122 (big-endian) byte order. The
// role comes first and is NUL-terminated so no (role, seed) pair can collide
// with another.
func (d *deriver) uuid(role string) [16]byte {
	return uuid5(namespace, append(append([]byte(role), 0), d.seed...))
}

// replace returns the seed-derived GUID standing in for old, in Microsoft's
// mixed-endian GUID layout if ms is set. A zero GUID means "none" and stays
// zero.
func (d *deriver) replace(old []byte, role string, ms bool) []byte {
	var k [16]byte
	copy(k[:], old)
	if k == ([16]byte{}) {
		return k[:]
	}
	if v, ok := d.renamed[k]; ok {
		return v[:]
	}
	v := d.uuid(role)
	if ms {
		v = msGUID(v)
	}
	d.renamed[k] = v
	return v[:]
}

// msGUID reorders an RFC 4122 UUID into the on-disk layout of a Windows
// GUID, whose first three fields are little-endian.
func msGUID(u [16]byte) [16]byte {
	u[0], u[1], u[2], u[3] = u[3], u[2], u[1], u[0]
	u[4], u[5] = u[5], u[4]
	u[6], u[7] = u[7], u[6]
	return u
}
