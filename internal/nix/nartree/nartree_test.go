package nartree

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/wire"
)

// walk reads every entry and its contents; it checks the invariants every accepted NAR
// must meet and returns the entries with contents, or the first error.
func walk(t testing.TB, data []byte) ([]*Entry, [][]byte, error) {
	r, err := NewReaderSize(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, nil, err
	}
	var ents []*Entry
	var contents [][]byte
	dirs := map[string]bool{}
	var total int64
	for {
		e, err := r.Next()
		if err == io.EOF {
			return ents, contents, nil
		}
		if err != nil {
			return ents, contents, err
		}
		// Names are bytes, not UTF-8 (fs.ValidPath would refuse "\xae0",
		// which Nix and ext4 take): no empty, "." or ".." component and
		// no NUL.
		if !validPath(e.Path) || (e.Path == ".") != (e.Depth == 0) {
			t.Fatalf("invalid path %q at depth %d", e.Path, e.Depth)
		}
		if e.Depth > 0 {
			parent := path.Dir(e.Path)
			if !dirs[parent] || strings.Count(e.Path, "/") != e.Depth-1 {
				t.Fatalf("%q (depth %d) not inside a directory seen before", e.Path, e.Depth)
			}
			if err := ValidName(path.Base(e.Path)); err != nil {
				t.Fatalf("accepted %q: %v", e.Path, err)
			}
		}
		// The root is "." and comes first whatever its children are named
		// (" " sorts before "."): order is checked between the others.
		if len(ents) > 1 && !nar.PathIsLexicographicallyOrdered("/"+ents[len(ents)-1].Path, "/"+e.Path) {
			t.Fatalf("%q after %q", e.Path, ents[len(ents)-1].Path)
		}
		if e.Type == Directory {
			dirs[e.Path] = true
		}
		var c []byte
		if e.Type == Regular {
			if total += e.Size; total > int64(len(data)) {
				t.Fatalf("claimed file sizes %d exceed the archive's %d bytes", total, len(data))
			}
			if c, err = io.ReadAll(r); err != nil {
				return ents, contents, err
			}
			if int64(len(c)) != e.Size {
				t.Fatalf("%s: read %d bytes of %d", e.Path, len(c), e.Size)
			}
		}
		ents = append(ents, e)
		contents = append(contents, c)
	}
}

// rewrite serialises entries as a NAR again. Not go-nix's nar.Writer: it refuses valid
// names such as "..a", taking the ".." prefix for a step up ("additional header").
func rewrite(t testing.TB, ents []*Entry, contents [][]byte) []byte {
	b := newNAR()
	var open []int // depths of the directories not yet closed
	closeTo := func(depth int) {
		for len(open) > 0 && open[len(open)-1] >= depth {
			d := open[len(open)-1]
			open = open[:len(open)-1]
			b.s(")")
			if d > 0 {
				b.s(")")
			}
		}
	}
	for i, e := range ents {
		closeTo(e.Depth)
		if e.Depth > 0 {
			b.s("entry", "(", "name", path.Base(e.Path), "node")
		}
		b.s("(", "type", e.Type.String())
		switch e.Type {
		case Directory:
			open = append(open, e.Depth)
			continue
		case Symlink:
			b.s("target", e.Target)
		case Regular:
			if e.Executable {
				b.s("executable", "")
			}
			b.s("contents")
			wire.WriteBytes(&b.Buffer, contents[i])
		}
		b.s(")")
		if e.Depth > 0 {
			b.s(")")
		}
	}
	closeTo(0)
	return b.Bytes()
}

// Real NARs from `nix-store --dump` of fixture store paths: the entries are the
// filesystem's (types, executable bits, targets, contents), in sorted order, and writing
// them back with go-nix gives the same bytes.
func TestRealNARs(t *testing.T) {
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Skip("nix-store not installed")
	}
	root, err := filepath.EvalSymlinks("/nix/var/nix/gcroots/packer-plugin-nixos/small")
	if err != nil {
		t.Skipf("fixture not built: %v", err)
	}
	out, err := exec.Command("nix-store", "-qR", root).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, sp := range strings.Fields(string(out)) {
		data, err := exec.Command("nix-store", "--dump", sp).Output()
		if err != nil {
			t.Fatal(err)
		}
		ents, contents, err := walk(t, data)
		if err != nil {
			t.Fatalf("%s: %v", sp, err)
		}
		var fsPaths []string
		filepath.WalkDir(sp, func(p string, d fs.DirEntry, err error) error {
			rel, _ := filepath.Rel(sp, p)
			fsPaths = append(fsPaths, rel)
			return err
		})
		if len(fsPaths) != len(ents) {
			t.Fatalf("%s: %d entries, filesystem has %d", sp, len(ents), len(fsPaths))
		}
		for i, e := range ents {
			if e.Path != fsPaths[i] {
				t.Fatalf("%s: entry %d is %q, filesystem walk %q", sp, i, e.Path, fsPaths[i])
			}
			full := filepath.Join(sp, e.Path)
			st, _ := os.Lstat(full)
			switch e.Type {
			case Directory:
				if !st.IsDir() {
					t.Errorf("%s: not a directory", full)
				}
			case Symlink:
				if tgt, _ := os.Readlink(full); tgt != e.Target {
					t.Errorf("%s: target %q, want %q", full, e.Target, tgt)
				}
			case Regular:
				b, _ := os.ReadFile(full)
				if !bytes.Equal(b, contents[i]) || e.Executable != (st.Mode()&0o100 != 0) {
					t.Errorf("%s: contents or executable bit differ", full)
				}
			}
		}
		if !bytes.Equal(rewrite(t, ents, contents), data) {
			t.Errorf("%s: rewritten NAR differs", sp)
		}
	}
}

// narBuilder writes raw NAR tokens, so hostile archives can be made.
type narBuilder struct{ bytes.Buffer }

func (b *narBuilder) s(tokens ...string) *narBuilder {
	for _, t := range tokens {
		wire.WriteString(&b.Buffer, t)
	}
	return b
}

func newNAR() *narBuilder { b := &narBuilder{}; return b.s("nix-archive-1") }

func dirWith(names ...string) []byte {
	b := newNAR().s("(", "type", "directory")
	for _, n := range names {
		b.s("entry", "(", "name", n, "node", "(", "type", "regular", "contents", "x", ")", ")")
	}
	return b.s(")").Bytes()
}

func nested(depth int) []byte {
	b := newNAR()
	for range depth {
		b.s("(", "type", "directory", "entry", "(", "name", "d", "node")
	}
	b.s("(", "type", "symlink", "target", "/x", ")")
	for range depth {
		b.s(")", ")")
	}
	return b.Bytes()
}

// Hostile archives are refused with a reason; none yields an odd path.
func TestHostileNARs(t *testing.T) {
	regular := newNAR().s("(", "type", "regular", "contents", "hello", ")").Bytes()
	cases := map[string]struct {
		data []byte
		want string
	}{
		"dotdot":         {dirWith(".."), `".."`},
		"dot":            {dirWith("."), `"."`},
		"slash":          {dirWith("a/b"), "contains '/'"},
		"nul":            {dirWith("a\x00b"), "contains '/' or NUL"},
		"empty name":     {dirWith(""), "empty entry name"},
		"unsorted":       {dirWith("b", "a"), "not strictly sorted"},
		"duplicate":      {dirWith("a", "a"), "not strictly sorted"},
		"long name":      {dirWith(strings.Repeat("n", MaxNameLen+1)), "exceeds maximum"},
		"string padding": {append(newNAR().Bytes(), 1, 0, 0, 0, 0, 0, 0, 0, '(', 0, 0, 0, 0, 0, 0, 1), "padding"},
		"too deep":       {nested(MaxDepth + 1), "deeper than"},
		"trailing data":  {append(regular, make([]byte, 8)...), "archive ends at byte"},
		"truncated":      {regular[:len(regular)-8], "unexpected EOF"},
		"bad magic":      {newNAR().Bytes()[:8], "not a NAR"},
		"empty target":   {newNAR().s("(", "type", "symlink", "target", "", ")").Bytes(), "symlink target"},
		"unknown type":   {newNAR().s("(", "type", "fifo", ")").Bytes(), "unknown node type"},
		"bad padding":    {append(newNAR().s("(", "type", "regular", "contents").Bytes(), 1, 0, 0, 0, 0, 0, 0, 0, 'x', 1, 0, 0, 0, 0, 0, 0), "padding"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := walk(t, c.data)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	// At the bound itself the archive is fine.
	if ents, _, err := walk(t, nested(MaxDepth)); err != nil || ents[len(ents)-1].Depth != MaxDepth {
		t.Fatalf("depth %d refused: %v", MaxDepth, err)
	}
}

// A caller may skip file contents: Next discards them and stays in step.
func TestSkipContents(t *testing.T) {
	r, err := NewReader(bytes.NewReader(dirWith("a", "b")))
	if err != nil {
		t.Fatal(err)
	}
	if got := entryPaths(t, r, nil); strings.Join(got, ",") != ".,a,b" {
		t.Fatalf("entries %v", got)
	}
}

// skipSource is a Skipper over bytes that counts what it skipped.
type skipSource struct {
	*bytes.Reader
	skipped int64
}

func (s *skipSource) Skip(n int64) error {
	s.skipped += n
	_, err := s.Seek(n, io.SeekCurrent)
	return err
}

// A Skipper source passes over the contents nobody reads, and the walk
// stays in step: the same entries, the same errors for broken archives.
func TestSkipper(t *testing.T) {
	big := strings.Repeat("x", 1000)
	b := newNAR().s("(", "type", "directory")
	for _, n := range []string{"a", "b", "c"} {
		b.s("entry", "(", "name", n, "node", "(", "type", "regular", "contents", big, ")", ")")
	}
	data := b.s(")").Bytes()
	src := &skipSource{Reader: bytes.NewReader(data)}
	r, err := NewReaderSize(src, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	got := entryPaths(t, r, func(e *Entry) {
		if e.Path == "b" { // read part of one file: the rest is skipped
			buf := make([]byte, 10)
			if _, err := io.ReadFull(r, buf); err != nil || string(buf) != big[:10] {
				t.Fatalf("read %q, %v", buf, err)
			}
		}
	})
	if strings.Join(got, ",") != ".,a,b,c" || src.skipped != 3000-10 {
		t.Fatalf("entries %v, skipped %d bytes, want 2990", got, src.skipped)
	}
	for name, bad := range map[string][]byte{
		"truncated in contents": data[:len(data)-len(big)/2],
		"bad padding":           append(newNAR().s("(", "type", "regular", "contents").Bytes(), 1, 0, 0, 0, 0, 0, 0, 0, 'x', 1, 0, 0, 0, 0, 0, 0),
	} {
		r, err := NewReader(&skipSource{Reader: bytes.NewReader(bad)})
		if err != nil {
			t.Fatal(err)
		}
		for err == nil {
			_, err = r.Next()
		}
		if errors.Is(err, io.EOF) {
			t.Errorf("%s: read to the end", name)
		}
	}
	// With a size, a skip past the archive's end is refused.
	r, _ = NewReaderSize(&skipSource{Reader: bytes.NewReader(data)}, int64(len(data)-len(big)))
	for err = nil; err == nil; _, err = r.Next() {
	}
	if errors.Is(err, io.EOF) {
		t.Error("a skip past the declared size was not refused")
	}
}

// entryPaths reads r to its end and returns its entries' paths, calling
// each (if not nil) with every entry as it comes.
func entryPaths(t *testing.T, r *Reader, each func(*Entry)) []string {
	t.Helper()
	var got []string
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e.Path)
		if each != nil {
			each(e)
		}
	}
}

// Without a size, a content length beyond the data fails when read; with one, at the header.
func TestSizeClaims(t *testing.T) {
	nb := newNAR().s("(", "type", "regular", "contents")
	data := append(nb.Bytes(), 0xff, 0xff, 0, 0, 0, 0, 0, 0) // 65535 bytes claimed, none there
	r, _ := NewReaderSize(bytes.NewReader(data), int64(len(data)))
	if _, err := r.Next(); err == nil || !strings.Contains(err.Error(), "exceeds the archive") {
		t.Fatalf("got %v", err)
	}
	r, _ = NewReader(bytes.NewReader(data))
	if e, err := r.Next(); err != nil || e.Size != 65535 {
		t.Fatalf("got %v %v", e, err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v", err)
	}
	// Without a size, trailing bytes are found by reading one more.
	regular := newNAR().s("(", "type", "regular", "contents", "hello", ")").Bytes()
	r, _ = NewReader(bytes.NewReader(append(regular, 0)))
	r.Next()
	if _, err := r.Next(); err == nil || !strings.Contains(err.Error(), "trailing data") {
		t.Fatalf("got %v", err)
	}
}

func validPath(p string) bool {
	if p == "." {
		return true
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." || strings.ContainsRune(c, 0) {
			return false
		}
	}
	return true
}
