package container

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

// vhdxPointLog makes both headers of the vhdx at p put the log at off.
func vhdxPointLog(t *testing.T, p string, off uint64) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []int{vhdxHeader1, vhdxHeader2} {
		hdr := b[h : h+vhdxHeaderLen]
		binary.LittleEndian.PutUint64(hdr[vhdxHdrLogOffset:], off)
		binary.LittleEndian.PutUint32(hdr[4:], vhdxCRC(hdr, 0, len(hdr)))
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// vhdxRegionAt returns the file offset of the region whose GUID is id.
func vhdxRegionAt(t *testing.T, b, id []byte) uint64 {
	t.Helper()
	tab := b[vhdxRegion1:]
	for i := uint32(0); i < binary.LittleEndian.Uint32(tab[8:]); i++ {
		if e := tab[16+32*i:]; bytes.Equal(e[:16], id) {
			return binary.LittleEndian.Uint64(e[16:])
		}
	}
	t.Fatalf("no region %x", id)
	return 0
}

// The old Normalize zeroed the vhdx log wherever the active header put
// it, checking only its alignment (issue 11's rule: every offset is
// checked against the structure that holds it; finding 1's harm, data
// outside the structure wiped). A header pointing the log at a payload
// block, the BAT or the metadata region had that zeroed: the guest's
// data, or every block's location, lost. Now the log must lie apart from
// every region and every block the BAT points at, or the file is left
// alone, byte for byte.
func TestVHDXLogElsewhereRefused(t *testing.T) {
	raw, p := convertOne(t, VHDX, "-o", "block_size=1M")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	bat := vhdxRegionAt(t, b, vhdxBATRegion)
	first := binary.LittleEndian.Uint64(b[bat:]) // raw has data at 0: block 0 is present
	if first&7 != 6 {
		t.Fatalf("BAT entry 0 is %#x, not a fully present block", first)
	}
	for _, c := range []struct {
		name string
		off  uint64
		want string
	}{
		{"payload block", first &^ (vhdxMiB - 1), "BAT entry 0 points at a block"},
		{"BAT", bat, "overlaps the region BAT"},
		{"metadata", vhdxRegionAt(t, b, vhdxMetadataRegion), "overlaps the region metadata"},
		{"header section", 0, "misaligned"},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := t.TempDir() + "/disk"
			copyFile(t, p, q)
			vhdxPointLog(t, q, c.off)
			h := sum(t, q)
			if _, err := normalize(t, q, testOpts); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Normalize error %v, want one mentioning %q", err, c.want)
			}
			if sum(t, q) != h {
				t.Fatal("refused file was modified")
			}
		})
	}
	// The unmodified image still normalises, and its data is intact.
	mustNormalize(t, p, testOpts)
	verify(t, convCase{format: VHDX, check: true}, raw, p)
}

// The old Normalize rewrote the whole descriptor area the header claims,
// zeroing everything after the text's NUL: a descriptor size reaching
// past the area qemu allotted zeroed the grain directories behind it
// (issue 11's rule: offsets checked against the structure that holds
// them; finding 1's harm). Now the area must end before the grain
// directories and the first grain.
func TestVMDKDescriptorOverGrainDirectory(t *testing.T) {
	_, p := convertOne(t, VMDK)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	rgd := binary.LittleEndian.Uint64(b[vmdkRGDOffset:])
	off := binary.LittleEndian.Uint64(b[vmdkDescOffset:])
	binary.LittleEndian.PutUint64(b[vmdkDescSize:], rgd-off+8) // 8 sectors into the grain directory
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	h := sum(t, p)
	if _, err := normalize(t, p, testOpts); err == nil || !strings.Contains(err.Error(), "redundant grain directory") {
		t.Fatalf("Normalize error %v, want the grain directory named", err)
	}
	if sum(t, p) != h {
		t.Fatal("refused file was modified")
	}
}
