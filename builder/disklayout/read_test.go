package disklayout

import (
	"os"
	"testing"
)

// ReadPartitions finds what Write laid out, for every table type, and
// nothing on a bare filesystem.
func TestReadPartitions(t *testing.T) {
	for _, typ := range []Type{Legacy, LegacyGPT, EFI, EFIXBootLdr, Hybrid, None} {
		t.Run(string(typ), func(t *testing.T) {
			l := planDefault(t, typ)
			f, err := os.Open(writeImage(t, l))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := ReadPartitions(f)
			if err != nil {
				t.Fatal(err)
			}
			if typ == None {
				if len(got) != 0 {
					t.Fatalf("a bare filesystem has partitions %+v", got)
				}
				return
			}
			if len(got) != len(l.Partitions) {
				t.Fatalf("got %d partitions %+v, want %d", len(got), got, len(l.Partitions))
			}
			for i, p := range l.Partitions {
				if got[i].Start != p.Start || got[i].Size != p.Size {
					t.Errorf("partition %d: %+v, want start %d size %d", i+1, got[i], p.Start, p.Size)
				}
			}
		})
	}
}
