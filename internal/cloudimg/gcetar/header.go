package gcetar

// The old GNU tar header of a sparse member and its extension blocks, as GNU
// tar 1.34 writes them with --format=oldgnu (its manual, "GNU tar internal
// and external formats" and "Storing Sparse Files"; tar.h's
// oldgnu_header and sparse_header).

const (
	blockSize  = 512
	recordSize = 20 * blockSize // GNU tar's default blocking factor

	headEntries = 4  // sparse entries in the member's header
	extEntries  = 21 // sparse entries in each extension block
	entrySize   = 24 // offset[12] numbytes[12]

	// Header field offsets.
	offName       = 0
	offMode       = 100
	offUID        = 108
	offGID        = 116
	offSize       = 124
	offMtime      = 136
	offChksum     = 148
	offTypeflag   = 156
	offMagic      = 257 // "ustar  \0": magic and version in one, old GNU's spelling
	offSparse     = 386
	offIsExtended = 482
	offRealSize   = 483

	extIsExtended = extEntries * entrySize // 504, in an extension block

	nameMax = 99 // GNU tar moves names of 100 bytes or more to a ././@LongLink member
)

// entry is one sparse map entry: n bytes of data stored for offset off.
type entry struct{ off, n int64 }

// header returns the member's header block. stored is the number of data
// bytes that follow (the map's total), realSize the file's size, head the
// map's first entries (at most 4), extended whether more follow in
// extension blocks. Fields GNU tar leaves empty for a regular file in this
// format (names of owner and group with --numeric-owner, atime, ctime,
// device numbers) are left zero.
func header(name string, mtime, stored, realSize int64, head []entry, extended bool) []byte {
	b := make([]byte, blockSize)
	copy(b[offName:], name)
	putNumber(b[offMode:offMode+8], 0o644)
	putNumber(b[offUID:offUID+8], 0)
	putNumber(b[offGID:offGID+8], 0)
	putNumber(b[offSize:offSize+12], stored)
	putNumber(b[offMtime:offMtime+12], mtime)
	b[offTypeflag] = 'S'
	copy(b[offMagic:], "ustar  \x00")
	for i, e := range head {
		putEntry(b[offSparse+i*entrySize:], e)
	}
	if extended {
		b[offIsExtended] = 1
	}
	putNumber(b[offRealSize:offRealSize+12], realSize)
	putChecksum(b)
	return b
}

// putEntry stores e in the 24 bytes at b.
func putEntry(b []byte, e entry) {
	putNumber(b[0:12], e.off)
	putNumber(b[12:24], e.n)
}

// putNumber stores v (not negative) in a numeric field as GNU tar does:
// octal digits then a NUL when they fit, else base-256 (GNU's extension,
// marked by the first byte's high bit; big-endian in the other bytes), which
// a 12-byte field needs from 8 GiB on.
func putNumber(field []byte, v int64) {
	digits := len(field) - 1
	if v < 1<<(3*digits) {
		for i := digits - 1; i >= 0; i-- {
			field[i] = byte('0' + v&7)
			v >>= 3
		}
		field[digits] = 0
		return
	}
	field[0] = 0x80
	for i := len(field) - 1; i > 0; i-- {
		field[i] = byte(v)
		v >>= 8
	}
}

// putChecksum stores the header's checksum: the sum of its bytes with the
// checksum field counted as spaces, as six octal digits, a NUL and a space.
func putChecksum(b []byte) {
	chk := b[offChksum : offChksum+8]
	copy(chk, "        ")
	var sum int64
	for _, c := range b[:blockSize] {
		sum += int64(c)
	}
	putNumber(chk[:7], sum)
}
