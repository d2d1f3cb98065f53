package fat

import (
	"cmp"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// checkPlan asserts, before the first byte is written, that every write
// and every free cluster to zero lies in the filesystem and that no two
// overlap, so that a plan that would damage anything is refused whole.
func (v *volume) checkPlan(writes []pendingWrite, dirty bitset) error {
	if err := v.check(v.dataOff, int64(v.clusters)*v.cs); err != nil {
		return fmt.Errorf("fat: data area: %w", err)
	}
	s := slices.Clone(writes)
	slices.SortFunc(s, func(a, b pendingWrite) int { return cmp.Compare(a.off, b.off) })
	for i, w := range s {
		n := int64(len(w.b))
		if err := v.check(w.off, n); err != nil {
			return err
		}
		if i > 0 && s[i-1].off+int64(len(s[i-1].b)) > w.off {
			return fmt.Errorf("fat: planned writes at %d and %d overlap", s[i-1].off, w.off)
		}
		if w.off+n <= v.dataOff {
			continue
		}
		if w.off < v.dataOff {
			return fmt.Errorf("fat: planned write at %d crosses into the data area", w.off)
		}
		for c := (w.off-v.dataOff)/v.cs + 2; c <= (w.off+n-1-v.dataOff)/v.cs+2; c++ {
			if dirty.has(c) {
				return fmt.Errorf("fat: planned write at %d is in free cluster %d", w.off, c)
			}
		}
	}
	return nil
}

// apply zeroes the dirty free clusters, then makes the writes in order.
func (v *volume) apply(writes []pendingWrite, dirty bitset) error {
	var zero []byte
	for c := int64(2); c < int64(v.clusters)+2; {
		if !dirty.has(c) {
			c++
			continue
		}
		e := c + 1
		for e < int64(v.clusters)+2 && dirty.has(e) {
			e++
		}
		if zero == nil {
			zero = make([]byte, ioChunk)
		}
		if err := v.zero(v.clusterOff(uint32(c)), (e-c)*v.cs, zero); err != nil {
			return err
		}
		c = e
	}
	for _, w := range writes {
		if err := v.writeAt(w.b, w.off); err != nil {
			return err
		}
	}
	return nil
}

func (v *volume) writeAt(b []byte, off int64) error {
	if err := v.check(off, int64(len(b))); err != nil {
		return err
	}
	if _, err := v.f.WriteAt(b, v.off+off); err != nil {
		return fmt.Errorf("fat: write: %w", err)
	}
	return nil
}

// zero makes [off, off+n) a hole where the host filesystem allows, zeros
// otherwise: either reads back as zeros.
func (v *volume) zero(off, n int64, buf []byte) error {
	if err := v.check(off, n); err != nil {
		return err
	}
	if unix.Fallocate(int(v.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, v.off+off, n) == nil {
		return nil
	}
	for n > 0 {
		k := min(n, int64(len(buf)))
		if err := v.writeAt(buf[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}
