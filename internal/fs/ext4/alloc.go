package ext4

import "fmt"

// ErrFull is wrapped by every "filesystem full" error.
var ErrFull = fmt.Errorf("ext4: filesystem full")

// allocator hands out data blocks with a cursor that only moves forward and
// steps over the reserved group metadata. Everything below the cursor that
// is not reserved is therefore in use, which is how Close derives the block
// bitmaps without remembering any allocation.
type allocator struct {
	g    *geometry
	next uint64 // first block not yet considered
	ri   int    // first reserved span that ends after next
	used uint64 // data blocks handed out
}

// alloc returns a run of at most n (>0) contiguous free blocks.
func (a *allocator) alloc(n uint64) (start, got uint64, err error) {
	res := a.g.reserved
	for {
		for a.ri < len(res) && res[a.ri].end <= a.next {
			a.ri++
		}
		if a.ri < len(res) && res[a.ri].start <= a.next {
			a.next = res[a.ri].end
			continue
		}
		break
	}
	limit := a.g.blocks
	if a.ri < len(res) {
		limit = res[a.ri].start
	}
	if a.next >= a.g.blocks {
		return 0, 0, fmt.Errorf("%w: need %d more blocks", ErrFull, n)
	}
	got = min(n, limit-a.next)
	start = a.next
	a.next += got
	a.used += got
	return start, got, nil
}

// free reports how many blocks the cursor can still hand out.
func (a *allocator) free() uint64 {
	var reservedAbove uint64
	for i := a.ri; i < len(a.g.reserved); i++ {
		r := a.g.reserved[i]
		reservedAbove += r.end - max(r.start, min(a.next, r.end))
	}
	if a.next >= a.g.blocks {
		return 0
	}
	return a.g.blocks - a.next - reservedAbove
}
