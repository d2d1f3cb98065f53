package safeextract

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The bounds the fuzz target extracts with: small, so that inputs stay
// fast, and so that crossing them is easy to reach.
const (
	fuzzMaxBytes   = 256 << 10
	fuzzMaxEntries = 64
)

// FuzzExtract extracts arbitrary bytes as a tar stream, with openat2 and
// with the component walk. Seeds: GNU tar 1.34's archives of a tree with a
// relative and an absolute symlink, a hard link, a FIFO, a setuid file and
// a long name (gnu, pax and ustar formats, testdata/tars; gnu and pax
// sparse files), and archives built with archive/tar that try to escape:
// "..", absolute names, a symlink to the canary then a file through it,
// hard links out. Header checksums are fixed up before extraction.
// Invariants: nothing outside the destination changes (its
// parent holds only the destination and a canary directory, and the
// canary, which links in the seeds name, is byte for byte as it was);
// the destination holds at most MaxEntries non-directories and MaxBytes of
// file data; both resolvers agree on success and on the tree they leave.
func FuzzExtract(f *testing.F) {
	seeds, err := filepath.Glob("testdata/tars/*.tar")
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seeds: %v", err)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// Extractions go to a tmpfs when there is one: a disk's metadata
	// writes made executions a hundred times slower.
	base := os.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() && unix.Access("/dev/shm", unix.W_OK) == nil {
		base = "/dev/shm"
	}
	// The canary's absolute path is fixed so that the seeds can name it.
	canary := filepath.Join(base, fmt.Sprintf("safeextract-fuzz-canary-%d", os.Getuid()))
	if err := os.MkdirAll(canary, 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(canary, "keep"), []byte("canary"), 0o644); err != nil {
		f.Fatal(err)
	}
	want := tree(f, canary)
	for _, es := range [][]entry{
		{{name: "esc", typ: tar.TypeSymlink, link: canary}, {name: "esc/keep", body: "pwned"}},
		{{name: "esc", typ: tar.TypeSymlink, link: "../canary"}, {name: "esc/new/", typ: tar.TypeDir, mode: 0o755}},
		{{name: "l", typ: tar.TypeSymlink, link: canary + "/keep"}, {name: "l", body: "replaced, not written through"}},
		{{name: "h", typ: tar.TypeLink, link: "../canary/keep"}},
		{{name: "../canary/x", body: "x"}}, {{name: canary + "/x", body: "x"}},
		{{name: "a/b/c/", typ: tar.TypeDir, mode: 0o500}, {name: "a/b/c/f", body: "in a read-only dir"}, {name: "a/b", body: "over a dir"}},
	} {
		f.Add(tarOf(f, es...))
	}
	f.Fuzz(func(t *testing.T, in []byte) { extractBoth(t, base, canary, want, in) })
}

// extractBoth is FuzzExtract's body.
func extractBoth(t *testing.T, base, canary, want string, in []byte) {
	{
		in = fixChecksums(in)
		var results [2]string
		for i, walk := range []bool{false, true} {
			noOpenat2.Store(walk)
			parent, err := os.MkdirTemp(base, "safeextract-fuzz-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(parent)
			dst := filepath.Join(parent, "dst")
			if err := os.Mkdir(filepath.Join(parent, "canary"), 0o755); err != nil {
				t.Fatal(err)
			}
			err = Tar(dst, bytes.NewReader(in), Options{MaxBytes: fuzzMaxBytes, MaxEntries: fuzzMaxEntries})
			if got := tree(t, canary); got != want {
				t.Fatalf("walk=%v: the canary %s changed:\n%s", walk, canary, got)
			}
			des, err2 := os.ReadDir(parent)
			if err2 != nil || len(des) != 2 || des[0].Name() != "canary" || des[1].Name() != "dst" {
				t.Fatalf("walk=%v: outside the destination:\n%s", walk, tree(t, parent))
			}
			if got := tree(t, filepath.Join(parent, "canary")); got != "\n" {
				t.Fatalf("walk=%v: written into the sibling canary:\n%s", walk, got)
			}
			got := tree(t, dst)
			files, size := count(t, dst)
			if files > fuzzMaxEntries || size > fuzzMaxBytes*fuzzMaxEntries {
				t.Fatalf("walk=%v: %d files, %d bytes in the destination", walk, files, size)
			}
			results[i] = fmt.Sprintf("ok=%v\n%s", err == nil, got)
		}
		noOpenat2.Store(false)
		if results[0] != results[1] {
			t.Fatalf("openat2 and the walk differ:\n%s\n---\n%s", results[0], results[1])
		}
	}
}

// tree lists dir, without following links: kind, name, mode and digest
// (files), target (links) or mode (directories), one entry a line, sorted.
func tree(tb testing.TB, dir string) string {
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel = fmt.Sprintf("%q", rel)
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("f %s %o %x", rel, fi.Mode().Perm(), sha256.Sum256(b)))
		case fi.IsDir():
			lines = append(lines, fmt.Sprintf("d %s %o", rel, fi.Mode().Perm()))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("l %s %q", rel, target))
		default:
			lines = append(lines, fmt.Sprintf("? %s %v", rel, fi.Mode()))
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

// count is the number of non-directories below dir and the sum of the
// files' sizes (a hard link counts again: still bounded).
func count(tb testing.TB, dir string) (files, size int64) {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		fi, err := d.Info()
		if err == nil && fi.Mode().IsRegular() {
			size += fi.Size()
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return files, size
}

// fixChecksums recomputes the checksum of each header a tar reader would
// reach in b (a copy), so that mutations reach past the header check
// instead of dying on it.
func fixChecksums(b []byte) []byte {
	b = append([]byte(nil), b...)
	for off := 0; off+512 <= len(b); {
		h := b[off : off+512]
		if bytes.Count(h, []byte{0}) == 512 {
			off += 512 // the end-of-archive blocks
			continue
		}
		copy(h[148:156], "        ")
		sum := 0
		for _, c := range h {
			sum += int(c)
		}
		copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
		size, err := strconv.ParseInt(strings.Trim(string(h[124:136]), " \x00"), 8, 64)
		if err != nil || size < 0 || size > int64(len(b)) {
			break
		}
		off += 512 + int((size+511)/512*512)
	}
	return b
}
