package ext4

import "golang.org/x/sys/unix"

// writeback starts the kernel writing what the Writer has put in the page
// cache every writebackEvery bytes, without waiting for it: the disk then
// writes while the walk reads and checksums, instead of all at the final
// fsync, and dirty memory stays near writebackEvery whatever the image.
// It is a hint: a file that cannot take it (a pipe, another OS) loses
// nothing but the overlap.
type writeback struct {
	fd      int
	lo, hi  int64 // the range written since the last kick
	pending int64
	off     bool
}

const writebackEvery = 32 << 20

func (wb *writeback) wrote(at, n int64) {
	if wb.off || n <= 0 {
		return
	}
	if wb.pending == 0 {
		wb.lo, wb.hi = at, at+n
	} else {
		wb.lo, wb.hi = min(wb.lo, at), max(wb.hi, at+n)
	}
	wb.pending += n
	if wb.pending >= writebackEvery {
		wb.kick()
	}
}

func (wb *writeback) kick() {
	if wb.pending == 0 {
		return
	}
	if err := unix.SyncFileRange(wb.fd, wb.lo, wb.hi-wb.lo, unix.SYNC_FILE_RANGE_WRITE); err != nil {
		wb.off = true // not supported here: stop asking
	}
	wb.pending = 0
}
