package fat

// dirtyFree marks the free clusters whose bytes are not all zero: what
// deleted files left behind (systemd-boot's random seed, replaced
// kernels). Only the file's data is read, never its holes, at most
// ioChunk at a time: the cost follows the bytes the image stores, not the
// size its BPB claims.
func (v *volume) dirtyFree() (bitset, int, error) {
	dirty := newBitset(int64(v.clusters) + 2)
	count := 0
	// A multiple of any cluster size, no bigger than the data area.
	buf := make([]byte, min(ioChunk, int64(v.clusters)*v.cs))
	perChunk := uint32(int64(len(buf)) / v.cs)
	next := uint32(2) // clusters below are done
	end := v.clusterOff(v.clusters + 2)
	err := v.dataRuns(v.dataOff, end, func(a, b int64) error {
		c := max(next, uint32((a-v.dataOff)/v.cs)+2)
		last := uint32((b-1-v.dataOff)/v.cs) + 2 // ≤ clusters+1
		for c <= last {
			if v.next(c) != 0 {
				c++
				continue
			}
			e := c + 1 // a run of free clusters [c, e)
			for e <= last && e-c < perChunk && v.next(e) == 0 {
				e++
			}
			p := buf[:int64(e-c)*v.cs]
			if err := v.readAt(p, v.clusterOff(c)); err != nil {
				return err
			}
			for i := range e - c {
				if !allZero(p[int64(i)*v.cs : int64(i+1)*v.cs]) {
					dirty.set(int64(c + i))
					count++
				}
			}
			c = e
		}
		next = last + 1
		return nil
	})
	return dirty, count, err
}
