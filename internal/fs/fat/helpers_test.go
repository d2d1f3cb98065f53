package fat

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fattest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

const testTime = fattest.Time

func requireTool(t testing.TB, name string) { t.Helper(); imagecheck.RequireTool(t, name) }

// newImage creates a sparse file of size bytes.
func newImage(t testing.TB, size int64) (string, *os.File) {
	t.Helper()
	return imagecheck.SparseFile(t, "disk.img", size)
}

// write builds tree into f at offset with opts.
func write(t testing.TB, f *os.File, offset int64, opts Options, tree []fattest.Entry) {
	t.Helper()
	w, err := NewWriter(f, offset, opts)
	if err != nil {
		t.Fatal(err)
	}
	fattest.Write(t, w, header, tree)
}

// header is the Header that adds e.
func header(e fattest.Entry) Header {
	return Header{Name: e.Name, Mode: e.Mode, Mtime: e.Mtime, Size: int64(len(e.Data))}
}

// checkMtools reads every entry back through mtools, by long and by short
// path, and checks the listing shows each short name beside its long name.
func checkMtools(t testing.TB, img string, offset int64, tree []fattest.Entry) {
	t.Helper()
	spec := fmt.Sprintf("%s@@%d", img, offset)
	// Bare recursive listing: long names, full paths.
	var want []string
	for _, e := range tree {
		s := "::/" + e.Name
		if e.Dir {
			s += "/"
		}
		want = append(want, s)
	}
	got := strings.Split(strings.TrimSuffix(string(fattest.Mtools(t, "mdir", "-/", "-b", "-i", spec, "::")), "\n"), "\n")
	if missing, extra := diff(want, got); len(missing)+len(extra) > 0 {
		t.Errorf("mdir -/ -b: missing %q, unexpected %q", missing, extra)
	}
	// The long listing pairs each short name with its long name.
	listing := string(fattest.Mtools(t, "mdir", "-/", "-i", spec, "::"))
	shortPath := map[string]string{"": ""}
	for _, e := range tree {
		parent, base := filepath.Split(e.Name)
		parent = strings.TrimSuffix(parent, "/")
		if e.Short == "" {
			continue
		}
		shortPath[e.Name] = strings.TrimPrefix(shortPath[parent]+"/"+e.Short, "/")
		name, ext, _ := strings.Cut(e.Short, ".")
		line := fmt.Sprintf("%-8s %-3s", name, ext)
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + ` .*?(  ` + regexp.QuoteMeta(base) + `)?$`)
		m := re.FindStringSubmatch(listing)
		switch {
		case m == nil:
			t.Errorf("%s: short name %q not in mdir listing", e.Name, e.Short)
		case (base != e.Short) != (m[1] != ""):
			t.Errorf("%s: listing line %q: long name shown %v, want %v", e.Name, m[0], m[1] != "", base != e.Short)
		}
	}
	for _, e := range tree {
		if e.Dir {
			continue
		}
		for _, p := range []string{e.Name, shortPath[e.Name]} {
			if p == "" {
				continue
			}
			got := fattest.Mtools(t, "mcopy", "-n", "-i", spec, "::/"+p, "-")
			if !bytes.Equal(got, e.Data) {
				t.Errorf("mcopy ::/%s: %d bytes (sha %x), want %d (sha %x)", p, len(got), sha256.Sum256(got), len(e.Data), sha256.Sum256(e.Data))
			}
		}
	}
}

// diff returns what is in want but not got, and the reverse.
func diff(want, got []string) (missing, extra []string) {
	m := map[string]int{}
	for _, s := range want {
		m[s]++
	}
	for _, s := range got {
		m[s]--
	}
	for _, s := range want {
		if m[s] > 0 {
			missing = append(missing, s)
		}
	}
	for _, s := range got {
		if m[s] < 0 {
			extra = append(extra, s)
		}
	}
	return missing, extra
}
