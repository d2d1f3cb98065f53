package imagecheck

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// registrationFile is the one entry at the root of a store-only filesystem that is not a
// store path.
const registrationFile = nixstore.StoreImageRegistrationPath

// Extract copies the whole filesystem out with debugfs rdump into a new directory under
// t.TempDir() and returns it. rdump keeps modes, and owners when run as root; hard links
// come out as separate copies, so CompareTree reads link structure from the image itself.
func Extract(t testing.TB, fsys FS) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "extracted")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { makeWritable(dir) })
	Debugfs(t, fsys, "rdump / "+quote(dir))
	return dir
}

// reporter caps the number of reported mismatches: one systematic fault in a 20k-file
// closure should not print 20k lines.
type reporter struct {
	t testing.TB
	n int
}

const maxReports = 40

func (r *reporter) errorf(format string, args ...any) {
	r.t.Helper()
	r.n++
	if r.n <= maxReports {
		r.t.Errorf(format, args...)
	}
}

func (r *reporter) done(what string) {
	r.t.Helper()
	if r.n > maxReports {
		r.t.Errorf("%s: %d mismatches in all, %d not shown", what, r.n, r.n-maxReports)
	}
}

type hashJob struct {
	rel, host, extracted string
	mode                 uint32
	size                 int64
}

// CompareTree checks that each store path of closure (absolute host paths) is in the image,
// at the filesystem's root under its base name, exactly as in the host store:
//
//   - the set of names in every directory, both ways;
//   - each entry's type, permission bits (with setuid/setgid/sticky) and owner 0:0, as the
//     image records them (debugfs ls -p) and as extracted;
//   - regular files: size, and content (sha256 of the host file and the extracted copy);
//   - symlinks: target;
//   - hard links, by the builder's rule whatever the host store shares: non-empty regular
//     files with the same content and mode share one image inode, all others do not, and
//     each inode's link count in the image is the number of its names.
//
// The root may hold nothing else but lost+found and the registration file (both 0:0).
func CompareTree(t testing.TB, fsys FS, extracted string, closure []string) {
	t.Helper()
	rep := &reporter{t: t}
	img := walkImage(t, fsys, closure, rep)

	var jobs []hashJob
	seen := map[string]bool{}
	for _, sp := range closure {
		base := path.Base(sp)
		err := filepath.WalkDir(sp, func(hp string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel := base
			if hp != sp {
				r, err := filepath.Rel(sp, hp)
				if err != nil {
					return err
				}
				rel = base + "/" + filepath.ToSlash(r)
			}
			seen[rel] = true
			compareEntry(rep, hp, rel, filepath.Join(extracted, filepath.FromSlash(rel)), img, &jobs)
			return nil
		})
		if err != nil {
			t.Fatalf("walking %s: %v", sp, err)
		}
	}
	var extra []string
	for rel := range img {
		if !seen[rel] {
			extra = append(extra, rel)
		}
	}
	sort.Strings(extra)
	for _, rel := range extra {
		rep.errorf("%s: in the image but not in the host store", rel)
	}
	sums := compareContents(rep, jobs)
	// Groups in walk order, so the first name of each is the one written.
	groups := map[string][]string{}
	var order []string
	for i, j := range jobs {
		k := "empty " + j.rel
		if j.size > 0 {
			k = fmt.Sprintf("%04o %s", j.mode&0o7777, sums[i])
		}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], j.rel)
	}
	compareLinks(t, fsys, rep, img, groups, order)
	rep.done("CompareTree " + fsys.String())
}

// walkImage lists the image breadth first, one debugfs batch per directory level, and
// returns every entry under the closure's store paths by path relative to the root.
func walkImage(t testing.TB, fsys FS, closure []string, rep *reporter) map[string]entry {
	t.Helper()
	want := map[string]bool{}
	for _, sp := range closure {
		want[path.Base(sp)] = true
	}
	img := map[string]entry{}
	type dir struct {
		ino uint32
		rel string
	}
	var next []dir
	for _, e := range listDirs(t, fsys, []uint32{2})[0] {
		if e.uid != 0 || e.gid != 0 {
			rep.errorf("/%s: owner %d:%d in the image, want 0:0", e.name, e.uid, e.gid)
		}
		switch {
		case want[e.name]:
			img[e.name] = e
			if e.mode&syscall.S_IFMT == syscall.S_IFDIR {
				next = append(next, dir{e.ino, e.name})
			}
		case e.name == "lost+found" && e.mode&syscall.S_IFMT == syscall.S_IFDIR:
		case e.name == registrationFile && e.mode&syscall.S_IFMT == syscall.S_IFREG:
		default:
			rep.errorf("/%s: unexpected entry at the filesystem root (mode %o): neither a closure path, lost+found nor %s",
				e.name, e.mode, registrationFile)
		}
	}
	for len(next) > 0 {
		inos := make([]uint32, len(next))
		for i, d := range next {
			inos[i] = d.ino
		}
		lists := listDirs(t, fsys, inos)
		var after []dir
		for i, d := range next {
			for _, e := range lists[i] {
				rel := d.rel + "/" + e.name
				img[rel] = e
				if e.mode&syscall.S_IFMT == syscall.S_IFDIR {
					after = append(after, dir{e.ino, rel})
				}
			}
		}
		next = after
	}
	return img
}

func typeName(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return "regular file"
	case syscall.S_IFDIR:
		return "directory"
	case syscall.S_IFLNK:
		return "symlink"
	}
	return fmt.Sprintf("type %o", mode&syscall.S_IFMT)
}

func compareEntry(rep *reporter, hp, rel, xp string, img map[string]entry, jobs *[]hashJob) {
	var hs, xs syscall.Stat_t
	if err := syscall.Lstat(hp, &hs); err != nil {
		rep.errorf("%s: %v", hp, err)
		return
	}
	ie, ok := img[rel]
	if !ok {
		rep.errorf("%s: missing from the image", rel)
		return
	}
	if typeName(hs.Mode) != typeName(ie.mode) || hs.Mode&0o7777 != ie.mode&0o7777 {
		rep.errorf("%s: image has %s %04o, host store %s %04o", rel, typeName(ie.mode), ie.mode&0o7777, typeName(hs.Mode), hs.Mode&0o7777)
		return
	}
	if ie.uid != 0 || ie.gid != 0 {
		rep.errorf("%s: owner %d:%d in the image, want 0:0", rel, ie.uid, ie.gid)
	}
	if err := syscall.Lstat(xp, &xs); err != nil {
		rep.errorf("%s: not extracted: %v", rel, err)
		return
	}
	if typeName(xs.Mode) != typeName(hs.Mode) || xs.Mode&0o7777 != hs.Mode&0o7777 {
		rep.errorf("%s: extracted as %s %04o, host store %s %04o", rel, typeName(xs.Mode), xs.Mode&0o7777, typeName(hs.Mode), hs.Mode&0o7777)
		return
	}
	switch hs.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		if ie.size != hs.Size || xs.Size != hs.Size {
			rep.errorf("%s: size %d in the image, %d extracted, %d in the host store", rel, ie.size, xs.Size, hs.Size)
			return
		}
		*jobs = append(*jobs, hashJob{rel, hp, xp, hs.Mode, hs.Size})
	case syscall.S_IFLNK:
		ht, err1 := os.Readlink(hp)
		xt, err2 := os.Readlink(xp)
		if err1 != nil || err2 != nil || ht != xt || ie.size != int64(len(ht)) {
			rep.errorf("%s: symlink to %q (%d bytes in the image), host store %q (%v %v)", rel, xt, ie.size, ht, err1, err2)
		}
	}
}

// compareContents hashes host and extracted files in parallel (a closure can hold
// gigabytes) and returns the host files' sha256s.
func compareContents(rep *reporter, jobs []hashJob) []string {
	type result struct {
		h, x string
		err  error
	}
	res := make([]result, len(jobs))
	var wg sync.WaitGroup
	ch := make(chan int)
	for range min(runtime.NumCPU(), 8) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				h, err := fileSHA256(jobs[i].host)
				x, err2 := fileSHA256(jobs[i].extracted)
				res[i] = result{h, x, err}
				if err == nil {
					res[i].err = err2
				}
			}
		}()
	}
	for i := range jobs {
		ch <- i
	}
	close(ch)
	wg.Wait()
	for i, r := range res {
		switch {
		case r.err != nil:
			rep.errorf("%s: %v", jobs[i].rel, r.err)
		case r.h != r.x:
			rep.errorf("%s: content differs: image sha256 %s, host store %s", jobs[i].rel, r.x, r.h)
		}
	}
	sums := make([]string, len(res))
	for i, r := range res {
		sums[i] = r.h
	}
	return sums
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// compareLinks checks that the closure's content groups (the builder's hard-link rule)
// and image inode sharing are the same partition of the closure's regular files, and that
// the image's link counts say so too.
func compareLinks(t testing.TB, fsys FS, rep *reporter, img map[string]entry, groups map[string][]string, order []string) {
	t.Helper()
	owner := map[uint32][]string{} // image inode -> the group that claimed it
	var inos []uint32
	for _, k := range order {
		names := groups[k]
		ino := img[names[0]].ino
		for _, n := range names[1:] {
			if img[n].ino != ino {
				rep.errorf("%s and %s: the same content and mode, but image inodes %d and %d", names[0], n, ino, img[n].ino)
			}
		}
		if prev, ok := owner[ino]; ok {
			rep.errorf("%s and %s: different contents (or empty), but both image inode %d", prev[0], names[0], ino)
			continue
		}
		owner[ino] = names
		inos = append(inos, ino)
	}
	specs := make([]string, len(inos))
	for i, ino := range inos {
		specs[i] = fmt.Sprintf("<%d>", ino)
	}
	for i, st := range Stat(t, fsys, specs) {
		if names := owner[inos[i]]; st.Links != len(names) {
			rep.errorf("%s: image inode %d has link count %d, want %d (its names in the closure: %q)",
				names[0], inos[i], st.Links, len(names), names)
		}
	}
}
