package gcetar

import (
	"bytes"
	"testing"
)

func TestPutNumber(t *testing.T) {
	for _, tc := range []struct {
		width int
		v     int64
		want  string
	}{
		{12, 0, "00000000000\x00"},
		{12, 1700000000, "14524770400\x00"},
		{12, 8<<30 - 1, "77777777777\x00"},
		{12, 8 << 30, "\x80\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00"},
		{12, 1<<62 + 5, "\x80\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x05"},
		{8, 0o644, "0000644\x00"},
		{7, 0o16655, "016655\x00"},
	} {
		field := bytes.Repeat([]byte{0xee}, tc.width)
		putNumber(field, tc.v)
		if string(field) != tc.want {
			t.Errorf("putNumber(%d bytes, %d) = %q, want %q", tc.width, tc.v, field, tc.want)
		}
	}
}

// The stored size reaches 8 GiB only with that much data, too much for a
// test to archive: the header alone shows it in base-256.
func TestHeaderLargeStoredSize(t *testing.T) {
	b := header("disk.raw", 0, 9<<30, 10<<30, []entry{{0, 9 << 30}, {10 << 30, 0}}, false)
	if want := "\x80\x00\x00\x00\x00\x00\x00\x02\x40\x00\x00\x00"; string(b[offSize:offSize+12]) != want {
		t.Errorf("size field %q, want %q", b[offSize:offSize+12], want)
	}
	var sum int64
	for i, c := range b {
		if i >= offChksum && i < offChksum+8 {
			c = ' '
		}
		sum += int64(c)
	}
	var chk [8]byte
	putNumber(chk[:7], sum)
	chk[7] = ' '
	if string(b[offChksum:offChksum+8]) != string(chk[:]) {
		t.Errorf("checksum %q, want %q", b[offChksum:offChksum+8], chk)
	}
}
