package safeextract

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// entry is one tar entry of a test archive: a regular file unless typ or
// link say otherwise.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func tarOf(t testing.TB, es ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// bothResolvers runs f with openat2 and with the component walk.
func bothResolvers(t *testing.T, f func(t *testing.T)) {
	t.Run("openat2", func(t *testing.T) {
		f(t)
		if noOpenat2.Load() {
			t.Log("this kernel has no openat2: the walk ran")
		}
	})
	t.Run("walk", func(t *testing.T) {
		noOpenat2.Store(true)
		defer noOpenat2.Store(false)
		f(t)
	})
}

// dirs returns an empty destination and an empty directory outside it.
func dirs(t *testing.T) (dst, outside string) {
	t.Helper()
	base := t.TempDir()
	dst, outside = filepath.Join(base, "dst"), filepath.Join(base, "outside")
	for _, d := range []string{dst, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dst, outside
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		t.Errorf("%s was written outside the destination", filepath.Join(dir, de.Name()))
	}
}

func extract(t *testing.T, dst string, opt Options, es ...entry) error {
	t.Helper()
	return Tar(dst, bytes.NewReader(tarOf(t, es...)), opt)
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("extraction succeeded; want an error mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func TestExtractSymlinkEscape(t *testing.T) {
	bothResolvers(t, func(t *testing.T) {
		for _, tc := range []struct {
			name string
			then entry
		}{
			{"file", entry{name: "esc/file", body: "pwned"}},
			{"nested file", entry{name: "./esc/sub/file", body: "pwned"}},
			{"dir", entry{name: "esc/sub/", typ: tar.TypeDir, mode: 0o755}},
			{"symlink", entry{name: "esc/l", typ: tar.TypeSymlink, link: "x"}},
			{"dir over link", entry{name: "esc/", typ: tar.TypeDir, mode: 0o755}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dst, outside := dirs(t)
				err := extract(t, dst, Options{}, entry{name: "esc", typ: tar.TypeSymlink, link: outside}, tc.then)
				wantErr(t, err, tc.then.name)
				assertEmpty(t, outside)
				// The link itself was created, as a link.
				if got, err := os.Readlink(filepath.Join(dst, "esc")); err != nil || got != outside {
					t.Errorf("esc: readlink = %q, %v; want the link to %s", got, err, outside)
				}
			})
		}
	})
}

func TestExtractExistingLinkNotWrittenThrough(t *testing.T) {
	bothResolvers(t, func(t *testing.T) {
		dst, outside := dirs(t)
		target := filepath.Join(outside, "target")
		if err := os.WriteFile(target, []byte("host"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dst, "f")); err != nil {
			t.Fatal(err)
		}
		if err := extract(t, dst, Options{}, entry{name: "f", body: "guest"}); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(target); string(b) != "host" {
			t.Errorf("the host file behind the existing link became %q", b)
		}
		if fi, err := os.Lstat(filepath.Join(dst, "f")); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("f: %v, %v; want a regular file replacing the link", fi, err)
		}
	})
}

func TestExtractRefusesAbsoluteAndDotDot(t *testing.T) {
	bothResolvers(t, func(t *testing.T) {
		for _, name := range []string{"/abs", "../up", "a/../../up", "./../up", "a/..", "../outside/"} {
			t.Run(name, func(t *testing.T) {
				dst, outside := dirs(t)
				typ := byte(tar.TypeReg)
				if strings.HasSuffix(name, "/") {
					typ = tar.TypeDir
				}
				err := extract(t, dst, Options{}, entry{name: "ok", body: "x"}, entry{name: name, body: "pwned", typ: typ, mode: 0o755})
				wantErr(t, err, name)
				assertEmpty(t, outside)
				if des, _ := os.ReadDir(dst); len(des) != 1 {
					t.Errorf("destination holds %d entries; want only ok", len(des))
				}
				if _, err := os.Stat("/abs"); err == nil && name == "/abs" {
					t.Errorf("/abs was written")
				}
			})
		}
	})
}

func TestExtractHardLinkOutsideRefused(t *testing.T) {
	bothResolvers(t, func(t *testing.T) {
		dst, outside := dirs(t)
		secret := filepath.Join(outside, "secret")
		if err := os.WriteFile(secret, []byte("host"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, es := range [][]entry{
			{{name: "h", typ: tar.TypeLink, link: secret}},
			{{name: "h", typ: tar.TypeLink, link: "../outside/secret"}},
			{{name: "esc", typ: tar.TypeSymlink, link: outside}, {name: "h", typ: tar.TypeLink, link: "esc/secret"}},
			{{name: "esc", typ: tar.TypeSymlink, link: secret}, {name: "h", typ: tar.TypeLink, link: "esc"}, {name: "h", body: "pwned"}},
		} {
			err := extract(t, dst, Options{}, es...)
			last := es[len(es)-1]
			if last.typ != tar.TypeLink { // linking the symlink itself is allowed; writing h replaces it
				if err != nil {
					t.Fatal(err)
				}
			} else {
				wantErr(t, err, last.name, last.link)
			}
			if b, _ := os.ReadFile(secret); string(b) != "host" {
				t.Fatalf("the host file became %q", b)
			}
			if _, err := os.Lstat(filepath.Join(dst, "h")); err == nil && last.typ == tar.TypeLink {
				t.Errorf("%v: h was created", es)
			}
			os.RemoveAll(dst)
		}
		if des, _ := os.ReadDir(outside); len(des) != 1 {
			t.Errorf("outside holds %d entries; want only secret", len(des))
		}
	})
}

func TestExtractLimits(t *testing.T) {
	if MaxBytes != 4<<30 || MaxEntries != 1_000_000 {
		t.Errorf("limits %d bytes, %d entries; want 4 GiB and 1,000,000", MaxBytes, MaxEntries)
	}
	bothResolvers(t, func(t *testing.T) {
		dst, _ := dirs(t)
		err := extract(t, dst, Options{MaxBytes: 10}, entry{name: "a", body: "12345"}, entry{name: "b", body: "123456"})
		wantErr(t, err, `"b"`, "limit of 10 bytes")
		if _, err := os.Lstat(filepath.Join(dst, "b")); err == nil {
			t.Error("b was written past the limit")
		}
		dst, _ = dirs(t)
		if err := extract(t, dst, Options{MaxBytes: 10}, entry{name: "a", body: "12345"}, entry{name: "b", body: "12345"}); err != nil {
			t.Errorf("exactly at the limit: %v", err)
		}
		dst, _ = dirs(t)
		err = extract(t, dst, Options{MaxEntries: 2}, entry{name: "a"}, entry{name: "b"}, entry{name: "c"})
		wantErr(t, err, "more than 2 entries")
	})
}

func TestExtractTrailingData(t *testing.T) {
	dst, _ := dirs(t)
	data := append(tarOf(t, entry{name: "a", body: "x"}), make([]byte, 10240)...)
	if err := Tar(dst, bytes.NewReader(data), Options{}); err != nil {
		t.Fatalf("padding: %v", err)
	}
	data = append(data, make([]byte, maxTrailing)...)
	wantErr(t, Tar(dst, bytes.NewReader(data), Options{}), "after the end of the tar archive")
}

func TestExtractTree(t *testing.T) {
	bothResolvers(t, func(t *testing.T) {
		dst, _ := dirs(t)
		err := extract(t, dst, Options{Skip: func(n string) bool { return n == "skip" }},
			entry{name: "./", typ: tar.TypeDir, mode: 0o755},
			entry{name: "./d/", typ: tar.TypeDir, mode: 0o750},
			entry{name: "./d/f", body: "hello", mode: 0o600},
			entry{name: "./d/l", typ: tar.TypeSymlink, link: "/nix/store/whatever"},
			entry{name: "./d/h", typ: tar.TypeLink, link: "./d/f"},
			entry{name: "./implied/dir/g", body: "g"},
			entry{name: "./skip", body: "no"},
			entry{name: "./d/f2", body: "old"},
			entry{name: "./d/f2", body: "new"},
		)
		if err != nil {
			t.Fatal(err)
		}
		for p, want := range map[string]string{"d/f": "hello", "d/h": "hello", "implied/dir/g": "g", "d/f2": "new"} {
			if b, err := os.ReadFile(filepath.Join(dst, p)); err != nil || string(b) != want {
				t.Errorf("%s = %q, %v; want %q", p, b, err, want)
			}
		}
		if fi, err := os.Stat(filepath.Join(dst, "d/f")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("d/f mode: %v, %v", fi, err)
		}
		if fi, err := os.Lstat(filepath.Join(dst, "d")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o750 {
			t.Errorf("d: %v, %v; want a directory with mode 0750", fi, err)
		}
		if l, err := os.Readlink(filepath.Join(dst, "d/l")); err != nil || l != "/nix/store/whatever" {
			t.Errorf("d/l = %q, %v", l, err)
		}
		if _, err := os.Lstat(filepath.Join(dst, "skip")); !os.IsNotExist(err) {
			t.Errorf("skip was extracted: %v", err)
		}
		a, _ := os.Stat(filepath.Join(dst, "d/f"))
		b, _ := os.Stat(filepath.Join(dst, "d/h"))
		if !os.SameFile(a, b) {
			t.Error("d/h is not a hard link to d/f")
		}
	})
}

func TestLimitWriter(t *testing.T) {
	var b bytes.Buffer
	w := LimitWriter(&b, 4)
	if _, err := w.Write([]byte("ab")); err != nil {
		t.Fatal(err)
	}
	n, err := w.Write([]byte("cde"))
	wantErr(t, err, "limit of 4 bytes")
	if n != 2 || b.String() != "abcd" {
		t.Errorf("wrote %d, %q", n, b.String())
	}
}
