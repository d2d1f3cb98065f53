package disk

import (
	"encoding/binary"
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
// GPT); nil for a bare filesystem. Call Normalize first: it verifies the
// table this trusts.
func ReadPartitions(f *os.File) ([]Extent, error) {
	s0, s1 := make([]byte, SectorSize), make([]byte, SectorSize)
	if err := readAt(f, s0, 0); err != nil {
		return nil, err
	}
	if err := readAt(f, s1, SectorSize); err != nil {
		return nil, err
	}
	table, err := classify(s0, s1)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	var out []Extent
	switch table {
	case "gpt":
		n, esz := le.Uint32(s1[gptHdrNumEntries:]), le.Uint32(s1[gptHdrEntrySize:])
		if esz < 128 || uint64(n)*uint64(esz) > maxGPTEntries {
			return nil, fmt.Errorf("GPT header describes %d entries of %d bytes", n, esz)
		}
		entries := make([]byte, int64(n)*int64(esz))
		if err := readAt(f, entries, int64(le.Uint64(s1[gptHdrEntriesLBA:]))*SectorSize); err != nil {
			return nil, err
		}
		for i := uint32(0); i < n; i++ {
			e := entries[i*esz : (i+1)*esz]
			if isZero(e[:16]) {
				continue
			}
			first, last := int64(le.Uint64(e[32:])), int64(le.Uint64(e[40:]))
			out = append(out, Extent{Number: int(i) + 1, Start: first * SectorSize, Size: (last - first + 1) * SectorSize})
		}
	case "mbr":
		for i := 0; i < 4; i++ {
			e := s0[mbrEntriesOffset+16*i : mbrEntriesOffset+16*(i+1)]
			start, n := int64(le.Uint32(e[8:])), int64(le.Uint32(e[12:]))
			if e[4] == 0 || n == 0 {
				continue
			}
			out = append(out, Extent{Number: i + 1, Start: start * SectorSize, Size: n * SectorSize})
		}
	}
	return out, nil
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
