package agent

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths of upload, download and remove are resolved inside a root as a
// command chrooted there resolves them (issue 11 finding 8): the installed
// system's absolute symlinks (/etc/static, /srv -> /var/lib/srv) must not
// lead into the installer's own tree. openat2's RESOLVE_IN_ROOT does that
// in the kernel, race-free, ".." and absolute links clamped at the root.

// resolveRetries bounds the retries of openat2, which fails with EAGAIN when
// a rename or mount elsewhere raced with the resolution.
const resolveRetries = 16

// openRoot opens root ("" is "/"), an absolute path in the agent's
// namespace, for resolving paths inside it.
func openRoot(root string) (int, error) {
	if root == "" {
		root = "/"
	}
	if !path.IsAbs(root) {
		return -1, fmt.Errorf("root %q is not absolute", root)
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &pathErr{"open root", root, err}
	}
	return fd, nil
}

// inRoot is p made absolute and clean inside the root: "/" for the root.
func inRoot(p string) string { return path.Clean("/" + p) }

// openIn opens p inside rootfd, following symlinks inside the root.
func openIn(rootfd int, p string, flags int) (int, error) {
	how := unix.OpenHow{
		Flags: uint64(flags | unix.O_CLOEXEC),
		// The root's /proc is the guest's: /proc/1/root leads out.
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for i := 0; ; i++ {
		// An absolute path is relative to rootfd under RESOLVE_IN_ROOT.
		fd, err := unix.Openat2(rootfd, inRoot(p), &how)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EAGAIN) && i < resolveRetries:
			continue
		case errors.Is(err, unix.ENOSYS):
			return -1, fmt.Errorf("open %s: this kernel has no openat2 (Linux 5.6 or later is needed): %w", p, err)
		}
		return -1, &pathErr{"open", p, err}
	}
}

// pathErr is an error on a path inside the root, named as the installed
// system names it.
type pathErr struct {
	op, path string
	err      error
}

func (e *pathErr) Error() string { return e.op + " " + e.path + ": " + e.err.Error() }
func (e *pathErr) Unwrap() error { return e.err }

// mkdirAllIn opens directory dir inside the root, creating what is missing
// as mkdir -p run chrooted there would: each missing component is made in
// its resolved parent, then the path is resolved again, so a symlinked
// component is followed inside the root; a dangling one is an error.
func mkdirAllIn(rootfd int, dir string) (int, error) {
	dir = inRoot(dir)
	fd, err := openIn(rootfd, dir, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	cur, err := openIn(rootfd, "/", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, err
	}
	prefix := "/"
	for _, name := range strings.Split(dir[1:], "/") {
		prefix = path.Join(prefix, name)
		next, err := openIn(rootfd, prefix, unix.O_PATH|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) {
			if merr := unix.Mkdirat(cur, name, 0o755); merr != nil && !errors.Is(merr, unix.EEXIST) {
				unix.Close(cur)
				return -1, &pathErr{"mkdir", prefix, merr}
			}
			next, err = openIn(rootfd, prefix, unix.O_PATH|unix.O_DIRECTORY)
		}
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}
