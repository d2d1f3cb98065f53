package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// runScale runs ours on generated bench200k-like trees of growing size; a
// flat time per entry shows the writer is linear, large directories included.
func runScale(ctx context.Context, c config, sizes []int, w io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "### ours on generated bench200k-like trees, %s\n\n", machine())
	fmt.Fprintf(w, "A quarter of the files in one flat directory, the rest in directories of 1000; median of %d runs, warm cache, up to the image's fsync.\n\n", c.runs)
	fmt.Fprintln(w, "| files | entries | flat dir | wall time | per entry | peak RSS | image size (allocated) | e2fsck -fn |")
	fmt.Fprintln(w, "|--:|--:|--:|--:|--:|--:|--:|---|")
	for _, n := range sizes {
		dir := filepath.Join(c.tmp, "scale-"+strconv.Itoa(n))
		tree := filepath.Join(dir, "tree")
		logf("scale %d: generating the tree", n)
		flat, err := genTree(tree, n)
		if err != nil {
			return err
		}
		st, err := readTree([]string{tree})
		if err != nil {
			return err
		}
		extra := st.bytes * int64(c.extraPct) / 100
		args := []string{childCmd, "ours", "-extra", strconv.FormatInt(extra, 10)}
		ct := contender{key: "ours", name: "ours", image: true, cmd: func(img string) *exec.Cmd {
			return exec.Command(self, append(args, "-image", img, "--", tree)...)
		}}
		r := measure(ctx, c, ct, filepath.Join(dir, "image.raw"))
		removeAll(dir)
		if r.err != "" {
			return fmt.Errorf("ours on %d files: %s", n, r.err)
		}
		per := "—"
		if r.ok() {
			per = fmt.Sprintf("%.1f µs", float64(r.median().Microseconds())/float64(st.entries))
		}
		fmt.Fprintf(w, "| %d | %d | %d | %s | %s | %s | %s | %s |\n", n, st.entries, flat, timeCell(r), per, human(r.rss), sizeCell(r), orDash(r.fsck))
	}
	fmt.Fprintln(w)
	return nil
}

// genTree writes n small files under dir the way fixtures/nix/bench200k.nix
// does: sizes 0..3000 bytes (some inline, most one block), a quarter in one
// flat directory. It returns the flat directory's entry count.
func genTree(dir string, n int) (int, error) {
	const pad = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	data := make([]byte, 0, 8192)
	for len(data) < 4096+61 {
		data = append(data, pad...)
	}
	flat := n / 4
	write := func(d string, k int, i int) error {
		body := data[k%61:][:(k*37)%3001]
		return os.WriteFile(filepath.Join(d, fmt.Sprintf("f%06d.dat", i)), body, 0o644)
	}
	fd := filepath.Join(dir, "flat")
	if err := os.MkdirAll(fd, 0o755); err != nil {
		return 0, err
	}
	for i := 0; i < flat; i++ {
		if err := write(fd, i+7, i); err != nil {
			return 0, err
		}
	}
	for k := 0; k < n-flat; k++ {
		d := filepath.Join(dir, "parts", fmt.Sprintf("d%04d", k/1000))
		if k%1000 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return 0, err
			}
		}
		if err := write(d, k+100000, k%1000); err != nil {
			return 0, err
		}
	}
	return flat, nil
}
