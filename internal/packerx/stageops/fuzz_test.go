package stageops

import (
	"path"
	"reflect"
	"strings"
	"testing"
)

// FuzzStageOps decodes arbitrary documents. Seeds: Encode's output for
// what nixos-contents sends (mkdir of a tree's directories, their modes,
// a recursive owner), and the hostile documents TestDecodeRefuses lists.
// Invariants: whatever Decode accepts has clean absolute paths below /
// without NUL (so joining one to the staging directory stays inside it),
// modes within 07777, and survives Encode and Decode unchanged.
func FuzzStageOps(f *testing.F) {
	mode, setgid := uint32(0o755), uint32(0o2750)
	f.Add(Encode([]Op{{Path: "/srv/tree", Mkdir: true}, {Path: "/srv/tree/sub", Mkdir: true}}))
	f.Add(Encode([]Op{{Path: "/srv/tree", Mode: &mode}, {Path: "/srv/tree/sub", Mode: &setgid}}))
	f.Add(Encode([]Op{{Path: "/home/alice", Owner: &[2]uint32{1000, 100}}}))
	f.Add(Encode(nil))
	for _, doc := range []string{
		`{"ops":[{"path":"srv"}]}`, `{"ops":[{"path":"/srv/../etc"}]}`, `{"ops":[{"path":"/"}]}`,
		`{"ops":[{"path":"/a","mode":65535}]}`, `{"ops":[{"path":"/a\u0000b"}]}`, `not json`,
	} {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ops, err := Decode(b)
		if err != nil {
			return
		}
		for _, op := range ops {
			p := op.Path
			if !strings.HasPrefix(p, "/") || p == "/" || path.Clean(p) != p || strings.Contains(p, "\x00") {
				t.Fatalf("accepted path %q", p)
			}
			for _, c := range strings.Split(p[1:], "/") {
				if c == "" || c == "." || c == ".." {
					t.Fatalf("accepted path %q with component %q", p, c)
				}
			}
			if op.Mode != nil && *op.Mode > 0o7777 {
				t.Fatalf("accepted mode %o", *op.Mode)
			}
		}
		again, err := Decode(Encode(ops))
		if err != nil {
			t.Fatalf("Decode(Encode(%+v)): %v", ops, err)
		}
		if len(ops) == 0 && len(again) == 0 {
			return // nil and empty encode alike
		}
		if !reflect.DeepEqual(again, ops) {
			t.Fatalf("round trip: %+v became %+v", ops, again)
		}
	})
}
