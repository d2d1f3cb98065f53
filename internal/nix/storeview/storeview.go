// Package storeview unpacks store paths from their NARs into a private
// directory, on demand, so the host can read a system it has only as NARs
// (install mode from a binary cache: the toplevel's boot loader settings,
// its kernel, its modules) with the ordinary file system calls.
//
// The NARs are bytes we did not write, and their symlinks name paths on the
// machine that built them. A symlink is therefore rewritten as it is
// unpacked: one into the store becomes an absolute link to the same path in
// the view, one anywhere else (an absolute path out of the store, a
// relative one climbing out of it) a link to a path under the view that
// never exists. Whatever the host then opens in the view, the kernel's own
// symlink resolution stays inside it.
package storeview

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nartree"
)

// outside is the directory under the view that links out of the store
// point into; it is never created.
const outside = ".outside"

// maxLinks bounds the symlinks Resolve follows (Linux's own limit).
const maxLinks = 40

// NAR opens the NAR of a store path, named by its base name
// (<hash>-<name>); ok is false for a path not in the closure.
type NAR func(base string) (r io.ReadCloser, size int64, ok bool, err error)

// View is a store (StoreDir, e.g. /nix/store) whose paths are unpacked from
// their NARs into Dir/<base> when first needed. It is safe for concurrent
// use.
type View struct {
	dir      string
	storeDir string
	open     NAR

	mu       sync.Mutex
	unpacked map[string]*unpacked
	bytes    atomic.Int64 // file contents written
}

type unpacked struct {
	done  chan struct{}
	err   error
	links []string // the store paths (base names) its symlinks point into
}

// New makes a view of storeDir unpacked into dir, which must exist and be
// empty, from the NARs open gives.
func New(dir, storeDir string, open NAR) *View {
	return &View{dir: filepath.Clean(dir), storeDir: path.Clean(storeDir), open: open, unpacked: map[string]*unpacked{}}
}

// Dir is where the view unpacks store paths.
func (v *View) Dir() string { return v.dir }

// Unpacked is how many bytes of file contents the view has written so far.
func (v *View) Unpacked() int64 { return v.bytes.Load() }

// Resolve returns where the store path p (StoreDir/<base>[/...]) lies in
// the view, its symlinks followed, unpacking every store path it passes
// through. An error names p: a path not in the closure, a link out of the
// store, a loop, a missing file.
func (v *View) Resolve(p string) (string, error) {
	logical, err := v.resolve(p)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	return v.physical(logical), nil
}

// ResolveTree is Resolve, and it also unpacks every store path the
// symlinks in the store path p resolves into point into, and theirs in
// turn, so that the whole tree at the returned path can be read (a
// kernel's modules are links into another store path).
func (v *View) ResolveTree(p string) (string, error) {
	out, err := v.Resolve(p)
	if err != nil {
		return "", err
	}
	rel, _ := filepath.Rel(v.dir, out)
	base, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
	seen := map[string]bool{}
	queue := []string{base}
	for len(queue) > 0 {
		b := queue[0]
		queue = queue[1:]
		if seen[b] {
			continue
		}
		seen[b] = true
		u, err := v.unpack(b)
		if errors.Is(err, errNotInClosure) {
			continue // a dangling link, as in the store it came from
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
		queue = append(queue, u.links...)
	}
	return out, nil
}

// physical maps a clean logical path under StoreDir into the view.
func (v *View) physical(logical string) string {
	return filepath.Join(v.dir, filepath.FromSlash(strings.TrimPrefix(logical, v.storeDir)))
}

var errNotInClosure = errors.New("not in the closure")

// resolve follows p's symlinks logically (as paths under StoreDir),
// unpacking store paths as it reaches them, and returns the logical path
// with no symlink left in it.
func (v *View) resolve(p string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return "", errors.New("not a clean absolute path")
	}
	links := 0
	done := v.storeDir
	rest, ok := strings.CutPrefix(p, v.storeDir+"/")
	if !ok {
		return "", fmt.Errorf("not in the store %s", v.storeDir)
	}
	for rest != "" {
		var name string
		name, rest, _ = strings.Cut(rest, "/")
		if done == v.storeDir {
			if _, err := v.unpack(name); err != nil {
				return "", fmt.Errorf("store path %s/%s: %w", v.storeDir, name, err)
			}
		}
		next := done + "/" + name
		fi, err := os.Lstat(v.physical(next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if rest != "" && !fi.IsDir() {
				return "", fmt.Errorf("%s is not a directory", next)
			}
			done = next
			continue
		}
		if links++; links > maxLinks {
			return "", errors.New("too many levels of symbolic links")
		}
		target, err := os.Readlink(v.physical(next))
		if err != nil {
			return "", err
		}
		// Every link in the view was made absolute inside it by unpack.
		rel, ok := strings.CutPrefix(target, v.dir+"/")
		if !ok || strings.HasPrefix(rel, outside+"/") {
			return "", fmt.Errorf("%s links out of the store", next)
		}
		logical := v.storeDir + "/" + filepath.ToSlash(rel)
		if rest != "" {
			logical += "/" + rest
		}
		// Start over from the store's root with the link's target.
		done, rest = v.storeDir, strings.TrimPrefix(logical, v.storeDir+"/")
	}
	return done, nil
}

// unpack unpacks the store path base into the view once; concurrent
// callers wait for the first.
func (v *View) unpack(base string) (*unpacked, error) {
	if base == "" || base == "." || base == ".." || strings.ContainsAny(base, "/\x00") || base == outside {
		return nil, fmt.Errorf("%q is not a store path name", base)
	}
	v.mu.Lock()
	u, ok := v.unpacked[base]
	if !ok {
		u = &unpacked{done: make(chan struct{})}
		v.unpacked[base] = u
	}
	v.mu.Unlock()
	if ok {
		<-u.done
		return u, u.err
	}
	defer close(u.done)
	r, size, ok, err := v.open(base)
	switch {
	case err != nil:
		u.err = err
	case !ok:
		u.err = errNotInClosure
	default:
		u.links, u.err = v.extract(base, r, size)
		if cerr := r.Close(); u.err == nil {
			u.err = cerr
		}
		if u.err != nil {
			u.err = fmt.Errorf("unpacking %s/%s: %w", v.storeDir, base, u.err)
		}
	}
	return u, u.err
}

// extract writes the NAR of store path base under the view, rewriting its
// symlinks, and returns the store paths they point into.
func (v *View) extract(base string, r io.Reader, size int64) ([]string, error) {
	nr, err := nartree.NewReaderSize(r, size)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(v.dir, base)
	var links []string
	for {
		e, err := nr.Next()
		if err == io.EOF {
			return links, nil
		}
		if err != nil {
			return nil, err
		}
		dst := root
		if e.Path != "." {
			dst = filepath.Join(root, filepath.FromSlash(e.Path))
		}
		switch e.Type {
		case nartree.Directory:
			err = os.Mkdir(dst, 0o755)
		case nartree.Regular:
			err = writeFile(dst, nr, e.Executable)
			v.bytes.Add(e.Size)
		case nartree.Symlink:
			var into string
			target := v.rewrite(base, e.Path, e.Target)
			if rel, ok := strings.CutPrefix(target, v.dir+"/"); ok && !strings.HasPrefix(rel, outside+"/") {
				into, _, _ = strings.Cut(rel, "/")
				links = append(links, into)
			}
			err = os.Symlink(target, dst)
		default:
			err = fmt.Errorf("%s: unknown entry type %v", e.Path, e.Type)
		}
		if err != nil {
			return nil, err
		}
	}
}

// rewrite maps the target of the link at rel inside store path base to
// an absolute path in the view: into the store, the same place in the
// view; out of it, under the view's never-created outside directory.
func (v *View) rewrite(base, rel, target string) string {
	var logical string
	if path.IsAbs(target) {
		logical = path.Clean(target)
	} else {
		dir := path.Join(v.storeDir, base)
		if rel != "." {
			dir = path.Dir(path.Join(dir, rel))
		} else {
			dir = v.storeDir
		}
		logical = path.Join(dir, target)
	}
	if in, ok := strings.CutPrefix(logical, v.storeDir+"/"); ok && in != outside && !strings.HasPrefix(in, outside+"/") {
		return filepath.Join(v.dir, filepath.FromSlash(in))
	}
	return filepath.Join(v.dir, outside, filepath.FromSlash(strings.TrimPrefix(logical, "/")))
}

func writeFile(dst string, r io.Reader, exec bool) error {
	mode := os.FileMode(0o644)
	if exec {
		mode = 0o755
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	return errors.Join(err, f.Close())
}
