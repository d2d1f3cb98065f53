package nartree

import (
	"bytes"
	"testing"
)

// FuzzNARTree: any input either fails with an error or yields entries meeting walk's
// invariants (valid relative paths inside directories seen before, names valid and
// sorted, contents exactly Size bytes, sizes within the input); an accepted archive is
// canonical: go-nix's writer gives back the same bytes. Seeds: real NARs of the small
// fixture closure (testdata/fuzz) and the hostile cases of TestHostileNARs.
func FuzzNARTree(f *testing.F) {
	f.Add(dirWith("a", "b"))
	f.Add(dirWith("b", "a"))
	f.Add(dirWith(".."))
	f.Add(nested(3))
	f.Add(newNAR().s("(", "type", "symlink", "target", "../x", ")").Bytes())
	f.Add(newNAR().s("(", "type", "regular", "executable", "", "contents", "#!/bin/sh\n", ")").Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		ents, contents, err := walk(t, data)
		if err != nil {
			return
		}
		if out := rewrite(t, ents, contents); !bytes.Equal(out, data) {
			t.Fatalf("accepted NAR is not canonical: rewritten %d bytes differ from %d", len(out), len(data))
		}
	})
}
