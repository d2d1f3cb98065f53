package partition

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/gptspec"
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
	s0, s1 := make([]byte, gptspec.SectorSize), make([]byte, gptspec.SectorSize)
	if err := readAt(f, s0, 0); err != nil {
		return nil, err
	}
	if err := readAt(f, s1, gptspec.SectorSize); err != nil {
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
		n, esz := le.Uint32(s1[gptspec.GPTHdrNumEntries:]), le.Uint32(s1[gptspec.GPTHdrEntrySize:])
		if esz < 128 || uint64(n)*uint64(esz) > maxGPTEntries {
			return nil, fmt.Errorf("GPT header describes %d entries of %d bytes", n, esz)
		}
		entries := make([]byte, int64(n)*int64(esz))
		if err := readAt(f, entries, int64(le.Uint64(s1[gptspec.GPTHdrEntriesLBA:]))*gptspec.SectorSize); err != nil {
			return nil, err
		}
		for i := uint32(0); i < n; i++ {
			e := entries[i*esz : (i+1)*esz]
			if isZero(e[gptspec.GPTEntryTypeGUID : gptspec.GPTEntryTypeGUID+16]) {
				continue
			}
			first, last := int64(le.Uint64(e[gptspec.GPTEntryFirstLBA:])), int64(le.Uint64(e[gptspec.GPTEntryLastLBA:]))
			out = append(out, Extent{Number: int(i) + 1, Start: first * gptspec.SectorSize, Size: (last - first + 1) * gptspec.SectorSize})
		}
	case "mbr":
		for i := 0; i < 4; i++ {
			e := mbrEntry(s0, i)
			start, n := int64(le.Uint32(e[gptspec.MBREntryStartLBA:])), int64(le.Uint32(e[gptspec.MBREntrySectors:]))
			if e[gptspec.MBREntryType] == 0 || n == 0 {
				continue
			}
			out = append(out, Extent{Number: i + 1, Start: start * gptspec.SectorSize, Size: n * gptspec.SectorSize})
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
