package partition

import (
	"fmt"
	"os"
)

// Extent is a partition as a table describes it, in bytes.
type Extent struct {
	Number      int // 1-based entry index
	Start, Size int64
}

// ReadPartitions lists the used entries of f's partition table (GPT, or
// the four primary MBR entries; a protective or hybrid MBR defers to the
// GPT); nil for a bare filesystem. It checks the table as Normalize does
// and refuses what Normalize refuses: every extent it returns lies inside
// the disk (a GPT's inside its usable LBAs) and none overlaps another.
func ReadPartitions(f *os.File) ([]Extent, error) {
	p, err := parse(f, NormalizeOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the partition table of %s: %w", f.Name(), err)
	}
	return p.parts, nil
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
