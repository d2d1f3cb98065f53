// Package imagecheck is test support: it checks a disk image the plugin wrote against the
// host's Nix store, with other people's tools as the oracles (e2fsck, debugfs, go-diskfs,
// nix-store, sfdisk, sgdisk). Every helper takes a testing.TB and fails it with a message
// that names the file and quotes the tool's output.
//
// The package must not import internal/fs/ext4: ext4's own tests use it.
package imagecheck

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// FS is an ext4 filesystem inside an image file, Offset bytes from its start.
type FS struct {
	Image  string
	Offset int64
}

// spec is how e2fsprogs name a filesystem at an offset inside a file.
func (fs FS) spec() string {
	if fs.Offset == 0 {
		return fs.Image
	}
	return fmt.Sprintf("%s?offset=%d", fs.Image, fs.Offset)
}

func (fs FS) String() string { return fs.spec() }

// RequireTool skips the test when one of the tools is not on PATH (make
// setup installs them all).
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			t.Skipf("%s not installed (make setup)", name)
		}
	}
}

// Fsck runs `e2fsck -fn` and fails on a non-zero exit or on any line but the version banner,
// the pass headers and the summary: e2fsck -n reports some problems with exit status 0.
func Fsck(t testing.TB, fs FS) {
	t.Helper()
	RequireTool(t, "e2fsck")
	out, err := exec.Command("e2fsck", "-fn", fs.spec()).CombinedOutput()
	var bad []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch {
		case strings.HasPrefix(l, "e2fsck "), strings.HasPrefix(l, "Pass "),
			strings.Contains(l, " files (") && strings.Contains(l, " blocks"):
		default:
			bad = append(bad, l)
		}
	}
	if err != nil || len(bad) > 0 {
		t.Fatalf("e2fsck -fn %s: %v; unexpected lines %q\n%s", fs, err, bad, out)
	}
}

// debugfsEnv keeps debugfs from starting a pager whatever the caller's terminal.
var debugfsEnv = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__")

// Debugfs runs one debugfs request (-R) read-only and returns its stdout. Anything on
// stderr but the version banner fails the test: debugfs exits 0 after most errors.
func Debugfs(t testing.TB, fs FS, request string) string {
	t.Helper()
	RequireTool(t, "debugfs")
	out, stderr, err := runDebugfs("-R", request, fs.spec())
	if err != nil || stderr != "" {
		t.Fatalf("debugfs -R %q %s: %v\n%s", request, fs, err, stderr)
	}
	return out
}

// DebugfsBatch runs requests in one debugfs process (-f), which matters when there are
// thousands, and returns each request's stdout in order. A request that prints nothing
// counts as failed (debugfs reports a missing file only on stderr), so for requests that
// may legitimately print nothing use Debugfs.
func DebugfsBatch(t testing.TB, fs FS, requests []string) []string {
	t.Helper()
	RequireTool(t, "debugfs")
	if len(requests) == 0 {
		return nil
	}
	var cmds bytes.Buffer
	for _, r := range requests {
		if strings.ContainsAny(r, "\n") {
			t.Fatalf("debugfs request %q holds a newline", r)
		}
		cmds.WriteString(r)
		cmds.WriteByte('\n')
	}
	f := filepath.Join(t.TempDir(), "debugfs-cmds")
	if err := os.WriteFile(f, cmds.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := runDebugfs("-f", f, fs.spec())
	if err != nil || stderr != "" {
		t.Fatalf("debugfs -f (%d requests, first %q) %s: %v\n%s", len(requests), requests[0], fs, err, stderr)
	}
	// debugfs echoes each request as a line "debugfs: <request>" before its output; no
	// output line of ls, stat or blocks starts that way.
	res := make([]string, len(requests))
	i := -1
	for _, l := range strings.SplitAfter(out, "\n") {
		if i+1 < len(requests) && l == "debugfs: "+requests[i+1]+"\n" {
			i++
			continue
		}
		if i < 0 {
			t.Fatalf("debugfs -f %s: output before the first request's echo: %q", fs, l)
		}
		res[i] += l
	}
	if i+1 != len(requests) {
		t.Fatalf("debugfs -f %s: output ends at request %d of %d", fs, i+1, len(requests))
	}
	for i, r := range res {
		if strings.TrimSpace(r) == "" {
			t.Fatalf("debugfs -f %s: request %q printed nothing (missing file?)", fs, requests[i])
		}
	}
	return res
}

func runDebugfs(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command("debugfs", args...)
	cmd.Env = debugfsEnv
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(e.String()), "\n") {
		if l != "" && !strings.HasPrefix(l, "debugfs ") {
			keep = append(keep, l)
		}
	}
	return o.String(), strings.Join(keep, "\n"), err
}

// Inode is what debugfs stat reports about one inode.
type Inode struct {
	Ino      uint32
	Type     string // debugfs's word: regular, directory, symlink, ...
	Mode     uint32 // permission bits with setuid, setgid, sticky (07777)
	Uid, Gid uint32
	Size     int64
	Links    int
}

var statRe = regexp.MustCompile(`(?s)^Inode: (\d+)\s+Type: (\w+)\s+Mode:\s+(\d+).*?User:\s+(\d+)\s+Group:\s+(\d+).*?Size: (\d+).*?Links: (\d+)`)

// Stat runs debugfs stat on each of specs (paths relative to the root, or "<ino>") in one
// batch.
func Stat(t testing.TB, fs FS, specs []string) []Inode {
	t.Helper()
	reqs := make([]string, len(specs))
	for i, s := range specs {
		reqs[i] = "stat " + quote(s)
	}
	outs := DebugfsBatch(t, fs, reqs)
	res := make([]Inode, len(specs))
	for i, out := range outs {
		m := statRe.FindStringSubmatch(strings.TrimLeft(out, "\n"))
		if m == nil {
			t.Fatalf("debugfs stat %s %s: unparsable:\n%.800s", specs[i], fs, out)
		}
		ino, _ := strconv.ParseUint(m[1], 10, 32)
		mode, _ := strconv.ParseUint(m[3], 8, 32)
		uid, _ := strconv.ParseUint(m[4], 10, 32)
		gid, _ := strconv.ParseUint(m[5], 10, 32)
		size, _ := strconv.ParseInt(m[6], 10, 64)
		links, _ := strconv.Atoi(m[7])
		res[i] = Inode{Ino: uint32(ino), Type: m[2], Mode: uint32(mode), Uid: uint32(uid), Gid: uint32(gid), Size: size, Links: links}
	}
	return res
}

// Blocks returns the filesystem block numbers holding spec's data, in file order.
func Blocks(t testing.TB, fs FS, spec string) []int64 {
	t.Helper()
	var res []int64
	for _, f := range strings.Fields(Debugfs(t, fs, "blocks "+quote(spec))) {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("debugfs blocks %s: %q", spec, f)
		}
		res = append(res, n)
	}
	return res
}

// quote makes a name one debugfs argument: its parser splits on blanks and honours
// double quotes.
func quote(s string) string {
	if strings.ContainsAny(s, " \t\"") {
		return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
	}
	return s
}

// entry is one directory entry as debugfs `ls -p` prints it.
type entry struct {
	ino      uint32
	mode     uint32 // with the S_IFMT type bits
	uid, gid uint32
	name     string
	size     int64 // -1 for directories (ls -p prints none)
}

// listDirs runs `ls -p <ino>` for each inode in one batch and returns the entries of each,
// without . and ..
func listDirs(t testing.TB, fs FS, inos []uint32) [][]entry {
	t.Helper()
	reqs := make([]string, len(inos))
	for i, ino := range inos {
		reqs[i] = fmt.Sprintf("ls -p <%d>", ino)
	}
	outs := DebugfsBatch(t, fs, reqs)
	res := make([][]entry, len(outs))
	for i, out := range outs {
		for _, l := range strings.Split(out, "\n") {
			if l == "" {
				continue
			}
			// "/ino/mode/uid/gid/name/size/": a name cannot hold a slash.
			f := strings.Split(l, "/")
			if len(f) != 8 || f[0] != "" || f[7] != "" {
				t.Fatalf("debugfs ls -p <%d> %s: unparsable line %q", inos[i], fs, l)
			}
			if f[5] == "." || f[5] == ".." {
				continue
			}
			ino, err1 := strconv.ParseUint(f[1], 10, 32)
			mode, err2 := strconv.ParseUint(f[2], 8, 32)
			uid, err3 := strconv.ParseUint(f[3], 10, 32)
			gid, err4 := strconv.ParseUint(f[4], 10, 32)
			size := int64(-1)
			var err5 error
			if f[6] != "" {
				size, err5 = strconv.ParseInt(f[6], 10, 64)
			}
			if err1 != nil || err2 != nil || err3 != nil || err4 != nil || err5 != nil {
				t.Fatalf("debugfs ls -p <%d> %s: unparsable line %q", inos[i], fs, l)
			}
			res[i] = append(res[i], entry{uint32(ino), uint32(mode), uint32(uid), uint32(gid), f[5], size})
		}
	}
	return res
}

// SparseFile creates a sparse file of size bytes named name in a test
// temporary directory, closed when the test ends.
func SparseFile(t testing.TB, name string, size int64) (string, *os.File) {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return p, f
}

// RandomSparseImage is a sparse raw image of size bytes in a test
// temporary directory holding chunk bytes of pseudo-random data (the same
// on every call) at its start, at 5 MiB, just past its middle (unaligned)
// and at its end; the rest is holes.
func RandomSparseImage(t testing.TB, size int64, chunk int) string {
	t.Helper()
	p, f := SparseFile(t, "in.img", size)
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, chunk)
	for _, off := range []int64{0, 5 << 20, size/2 + 12345, size - int64(chunk)} {
		rng.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}
