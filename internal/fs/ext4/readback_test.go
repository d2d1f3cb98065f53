package ext4

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

func checkDebugfs(t *testing.T, img string, ents []entry) {
	byName := map[string]entry{}
	for _, e := range ents {
		byName[e.h.Name] = e
	}
	names := []string{"etc/a-orig", "etc/bigids", "etc/empty", "etc/fast", "etc/slow", "etc/setuid",
		"etc/sgid", "etc/sticky", "etc/links", "files/d03/f007", "sparse5g", "short/1869f", "many/a-fairly-long-file-name-to-fill-leaves-019000"}
	for i, st := range imagecheck.Stat(t, imagecheck.FS{Image: img}, names) {
		name := names[i]
		e := byName[name]
		wantMode := unixMode(e.h.Mode)
		wantSize := uint64(e.h.Size)
		wantType := map[byte]string{'f': "regular", 'd': "directory", 'l': "symlink"}[e.kind]
		wantLinks := max(e.links, 1)
		switch e.kind {
		case 'l':
			wantSize = uint64(len(e.target))
		case 'd':
			wantSize = 4096
			wantLinks = 2
		}
		got := fmt.Sprintf("%s %o %d %d %d %d", st.Type, st.Mode, st.Uid, st.Gid, st.Size, st.Links)
		want := fmt.Sprintf("%s %o %d %d %d %d", wantType, wantMode, e.h.Uid, e.h.Gid, wantSize, wantLinks)
		if got != want {
			t.Errorf("%s: debugfs stat %q, want %q", name, got, want)
		}
		if e.kind == 'l' && len(e.target) < 60 {
			if out := debugfs(t, img, "stat "+name); !strings.Contains(out, `Fast link dest: "`+e.target+`"`) {
				t.Errorf("%s: fast link target:\n%s", name, out)
			}
		}
	}
	// rdump one tree and compare every file.
	dst := t.TempDir()
	debugfs(t, img, "rdump files "+dst)
	n := 0
	for _, e := range ents {
		if e.kind != 'f' || !strings.HasPrefix(e.h.Name, "files/") {
			continue
		}
		n++
		if got := imagecheck.SHA256File(t, filepath.Join(dst, e.h.Name)); got != e.expectSHA() {
			t.Errorf("%s: rdump content differs", e.h.Name)
		}
	}
	if n != 300 {
		t.Errorf("compared %d files", n)
	}
	slow := debugfs(t, img, "cat etc/slow")
	if slow != byName["etc/slow"].target {
		t.Errorf("slow symlink block %q", slow)
	}
}

func checkGoDiskfs(t *testing.T, img string, ents []entry) {
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	fsys := imagecheck.OpenDiskfs(t, imagecheck.FS{Image: img}, st.Size())
	checked := 0
	for _, e := range ents {
		// go-diskfs v1.9.4 cannot read files with holes; d01/f000 has some.
		if e.kind != 'f' || !strings.HasPrefix(e.h.Name, "files/d0") || e.h.Name == "files/d01/f000" {
			continue
		}
		got, err := imagecheck.DiskfsReadFile(fsys, e.h.Name)
		if err != nil {
			t.Fatalf("go-diskfs read %s: %v", e.h.Name, err)
		}
		if sha(got) != sha(e.data) {
			t.Errorf("go-diskfs: %s differs (%d vs %d bytes)", e.h.Name, len(got), len(e.data))
		}
		checked++
		if checked == 40 {
			break
		}
	}
	des, err := fsys.ReadDir("files/d04")
	if err != nil || len(des) != 30 {
		t.Errorf("go-diskfs ReadDir: %d entries, %v", len(des), err)
	}
	if tgt, err := fsys.ReadLink("etc/slow"); err != nil || !strings.HasSuffix(tgt, "-very-long-symlink-target") {
		t.Errorf("go-diskfs ReadLink slow: %q %v", tgt, err)
	}
}

// checkKernel loop-mounts the image read-only and compares every entry:
// the kernel is the reader that matters. Skipped only where this
// environment cannot loop-mount even a mkfs.ext4 image; the kernel
// refusing ours fails the test.
func checkKernel(t *testing.T, img string, ents []entry) {
	mnt, unmount := imagecheck.MountExt4(t, img, "ro")
	defer unmount()

	children := map[string][]string{"": {"lost+found"}}
	subdirs := map[string]int{"": 1}
	inoOf := map[string]uint64{}
	for _, e := range ents {
		dir, base := path.Split(e.h.Name)
		dir = strings.TrimSuffix(dir, "/")
		children[dir] = append(children[dir], base)
		if e.kind == 'd' {
			subdirs[dir]++
			children[e.h.Name] = append(children[e.h.Name], []string{}...)
		}
	}
	for _, e := range ents {
		p := filepath.Join(mnt, e.h.Name)
		var s unix.Stat_t
		if err := unix.Lstat(p, &s); err != nil {
			t.Errorf("kernel: %v", err)
			continue
		}
		inoOf[e.h.Name] = s.Ino
		if e.kind == 'h' {
			if s.Ino != inoOf[e.target] {
				t.Errorf("kernel: %s is not a link to %s", e.h.Name, e.target)
			}
			continue
		}
		wantType := map[byte]uint32{'f': unix.S_IFREG, 'd': unix.S_IFDIR, 'l': unix.S_IFLNK}[e.kind]
		if s.Mode&unix.S_IFMT != wantType || uint16(s.Mode&0o7777) != unixMode(e.h.Mode) ||
			s.Uid != e.h.Uid || s.Gid != e.h.Gid || s.Mtim.Sec != e.h.Mtime || s.Ctim.Sec != e.h.Mtime || s.Atim.Sec != e.h.Mtime {
			t.Errorf("kernel: %s: mode %o uid %d gid %d mtime %d", e.h.Name, s.Mode, s.Uid, s.Gid, s.Mtim.Sec)
		}
		switch e.kind {
		case 'd':
			if int(s.Nlink) != 2+subdirs[e.h.Name] {
				t.Errorf("kernel: %s nlink %d", e.h.Name, s.Nlink)
			}
			des, err := os.ReadDir(p)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, de := range des {
				got = append(got, de.Name())
			}
			want := append([]string(nil), children[e.h.Name]...)
			sort.Strings(want)
			if strings.Join(got, "/") != strings.Join(want, "/") {
				t.Errorf("kernel: %s lists %d entries, want %d", e.h.Name, len(got), len(want))
			}
		case 'l':
			if tgt, err := os.Readlink(p); err != nil || tgt != e.target {
				t.Errorf("kernel: readlink %s = %q, %v", e.h.Name, tgt, err)
			}
		case 'f':
			if s.Size != e.h.Size || int(s.Nlink) != max(e.links, 1) {
				t.Errorf("kernel: %s size %d nlink %d", e.h.Name, s.Size, s.Nlink)
			}
			switch {
			case e.target == "pattern":
				checkPattern(t, p, e.h.Size)
			case e.sparse != nil:
				checkSparse(t, p, &e)
			case len(e.data) > 0:
				if got := imagecheck.SHA256File(t, p); got != e.expectSHA() {
					t.Errorf("kernel: %s content differs", e.h.Name)
				}
			}
		}
	}
}

func checkPattern(t *testing.T, p string, size int64) {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 1<<20)
	want := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(got)) {
		n, _ := f.ReadAt(got, off)
		patterned(off, want[:n])
		if string(got[:n]) != string(want[:n]) || (n < len(got) && off+int64(n) != size) {
			t.Fatalf("kernel: %s differs near %d", p, off)
		}
	}
}

func checkSparse(t *testing.T, p string, e *entry) {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for off, d := range e.sparse {
		// Read the region with a block of context either side.
		lo := max(off-4096, 0)
		hi := min(off+int64(len(d))+4096, e.h.Size)
		got := make([]byte, hi-lo)
		if _, err := f.ReadAt(got, lo); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(e.expectAt(lo, hi-lo)) {
			t.Errorf("kernel: %s differs around %d", p, off)
		}
	}
	var s unix.Stat_t
	unix.Stat(p, &s)
	if s.Blocks*512 > 2<<20 {
		t.Errorf("kernel: %s has %d bytes allocated", p, s.Blocks*512)
	}
}
