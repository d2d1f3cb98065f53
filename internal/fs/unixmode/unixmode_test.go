package unixmode

import (
	"io/fs"
	"testing"
)

func TestPerm(t *testing.T) {
	cases := map[fs.FileMode]uint32{
		0o644:                                 0o644,
		0o755 | fs.ModeDir:                    0o755,
		0o4755&^0o4000 | fs.ModeSetuid:        0o4755,
		0o755 | fs.ModeSetgid:                 0o2755,
		0o777 | fs.ModeSticky | fs.ModeDir:    0o1777,
		fs.ModeSetuid | fs.ModeSetgid | 0o111: 0o6111,
	}
	for in, want := range cases {
		if got := Perm(in); got != want {
			t.Errorf("Perm(%v) = %o, want %o", in, got, want)
		}
	}
}

func TestFileModeInvertsPerm(t *testing.T) {
	for m := uint32(0); m <= 0o7777; m++ {
		if got := Perm(FileMode(m)); got != m {
			t.Fatalf("Perm(FileMode(%o)) = %o", m, got)
		}
	}
}
