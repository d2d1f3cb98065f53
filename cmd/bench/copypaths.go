package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// The copy paths: how ours moves file data, timed in-process (the writer
// alone; Packer's share is the same for every row) on one fixture, warm
// cache, to the image's fsync:
//   - the size from which a file is copied with copy_file_range rather than
//     read into the writer's buffer (ext4.CopyFileRangeMin), swept; every
//     row must make the same image;
//   - a cold page cache (emptied before each run), with the writing walk's
//     read-ahead and without;
//   - block sharing: the tree on a loop-mounted XFS with reflink, the image
//     written on that XFS (copy_file_range clones the blocks) and on the
//     scratch filesystem (it copies them).

// cfrSweep are the thresholds tried; math.MaxInt64 is "never".
var cfrSweep = []int64{4 << 10, 64 << 10, 256 << 10, 1 << 20, math.MaxInt64}

type copyRow struct {
	name   string
	r      *row
	sum    string // the image's sha256
	shared int64  // bytes of the image FIEMAP reports shared; -1 not asked
}

func cfrName(n int64) string {
	switch {
	case n == math.MaxInt64:
		return "no copy_file_range: every file through the buffer"
	case n == ext4.CopyFileRangeMin:
		return fmt.Sprintf("copy_file_range for files of %s and more (the default)", human(n))
	}
	return fmt.Sprintf("copy_file_range for files of %s and more", human(n))
}

// benchCopyPaths runs the sweep and the reflink rows on fixture name.
func benchCopyPaths(ctx context.Context, c config, name string) ([]copyRow, string, error) {
	paths, err := closure(name)
	if err != nil {
		return nil, "", err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	dir := filepath.Join(c.tmp, "copy-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	defer removeAll(dir)
	st, err := readTree(paths) // and the page cache warmed
	if err != nil {
		return nil, "", err
	}
	extra := st.bytes * int64(c.extraPct) / 100
	ours := func(srcs []string, cfrMin int64, flags ...string) func(string) *exec.Cmd {
		return func(img string) *exec.Cmd {
			args := append([]string{childCmd, "ours", "-image", img, "-extra", strconv.FormatInt(extra, 10),
				"-cfr-min", strconv.FormatInt(cfrMin, 10)}, flags...)
			return exec.Command(self, append(append(args, "--"), srcs...)...)
		}
	}
	var rows []copyRow
	var prep func() error
	run := func(name string, cmd func(string) *exec.Cmd, image string, shared bool) {
		ct := contender{key: "copy", name: name, image: true, cmd: cmd, keep: image + ".kept", prep: prep}
		r := measure(ctx, c, ct, image)
		cr := copyRow{name: name, r: r, shared: -1}
		if r.ok() {
			var err error
			if cr.sum, err = sha256File(ct.keep); err == nil && shared {
				cr.shared, err = sharedBytes(ct.keep)
			}
			if err != nil {
				r.err = err.Error()
			}
		}
		os.Remove(ct.keep)
		rows = append(rows, cr)
	}
	logf("copy paths, %s: copy_file_range from which file size", name)
	for _, n := range cfrSweep {
		run(cfrName(n), ours(paths, n), filepath.Join(dir, "image.raw"), false)
	}

	logf("copy paths, %s: cold page cache, with and without the writing walk's read-ahead", name)
	prep = dropCaches
	if err := dropCaches(); err != nil {
		rows = append(rows, copyRow{name: "cold page cache", r: &row{err: err.Error(), unavailable: true}})
	} else {
		run("cold page cache, read-ahead (the default)", ours(paths, ext4.CopyFileRangeMin), filepath.Join(dir, "image.raw"), false)
		run("cold page cache, no read-ahead", ours(paths, ext4.CopyFileRangeMin, "-readahead=false"), filepath.Join(dir, "image.raw"), false)
	}
	prep = nil
	if _, err := readTree(paths); err != nil {
		return nil, "", err
	}

	logf("copy paths, %s: block sharing (XFS with reflink on a loop device)", name)
	mnt, unmount, err := mountXFS(dir, 2*st.bytes+extra+(1<<30))
	if err != nil {
		rows = append(rows, copyRow{name: "XFS with reflink", r: &row{err: err.Error(), unavailable: true}})
		return rows, "", nil
	}
	defer func() {
		if err := unmount(); err != nil {
			logf("%v", err)
		}
	}()
	store := filepath.Join(mnt, "store")
	if err := stage(paths, store); err != nil {
		return nil, "", err
	}
	var staged []string
	for _, p := range paths {
		staged = append(staged, filepath.Join(store, filepath.Base(p)))
	}
	if _, err := readTree(staged); err != nil {
		return nil, "", err
	}
	run("tree and image on one XFS (reflink)", ours(staged, ext4.CopyFileRangeMin), filepath.Join(mnt, "image.raw"), true)
	run("tree on XFS, image on the scratch filesystem (copy)", ours(staged, ext4.CopyFileRangeMin), filepath.Join(dir, "image.raw"), true)
	return rows, fsType(dir), nil
}

// dropCaches writes the dirty pages and empties the page cache, so the next
// run reads the tree from the disk.
// mountXFS is imagecheck.MountReflinkXFS, or why it cannot run here.
func mountXFS(dir string, size int64) (string, func() error, error) {
	for _, tool := range []string{"mkfs.xfs", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", nil, fmt.Errorf("%s is not installed", tool)
		}
	}
	return imagecheck.MountReflinkXFS(dir, size)
}

func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		return fmt.Errorf("emptying the page cache (needs root): %w", err)
	}
	return nil
}

func sharedBytes(name string) (int64, error) {
	f, err := os.Open(name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return imagecheck.Shared(f)
}

// fsType names the filesystem dir is on.
func fsType(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "?"
	}
	switch st.Type {
	case 0xef53:
		return "ext4"
	case 0x58465342:
		return "XFS"
	case 0x9123683e:
		return "btrfs"
	case 0x01021994:
		return "tmpfs"
	}
	return fmt.Sprintf("type %#x", st.Type)
}

func printCopyPaths(w io.Writer, c config, name, scratchFS string, rows []copyRow) {
	fmt.Fprintf(w, "### copy paths: %s, in-process\n\n", name)
	fmt.Fprintf(w, "Ours' writer alone (Packer's share is the same for every row), warm cache, to the image's fsync, median of %d runs; the scratch filesystem is %s. Every row of the sweep must make the same image (sha256).\n\n", c.runs, scratchFS)
	fmt.Fprintf(w, "| copy path | wall time | image sha256 | shared with the tree |\n|---|--:|---|--:|\n")
	for _, cr := range rows {
		t := "—"
		if cr.r.ok() {
			t = dur(cr.r.median())
		} else {
			t = "failed: " + cr.r.err
		}
		shared := "—"
		if cr.shared >= 0 {
			shared = human(cr.shared)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", cr.name, t, cr.sum[:min(12, len(cr.sum))], shared)
	}
	fmt.Fprintln(w)
}
