package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// The floors: what no writer of this tree can beat on this machine.
//   - reading the tree: the walk, lstat and every byte read once (child.go);
//   - `tar -cf - | cat`: the same through a pipe, as the issue measured it
//     (cat, because GNU tar skips reading file data when it writes to
//     /dev/null);
//   - `dd conv=fsync`: copying an image of the same size from the page
//     cache to a new file and syncing it, the cost of the bytes alone.
func floorContenders(paths []string, src func() (string, error)) []contender {
	names := make([]string, len(paths))
	for i, p := range paths {
		names[i] = filepath.Base(p)
	}
	tar := func(string) *exec.Cmd {
		args := append([]string{"-c", `tar -C "$0" -cf - "$@" | cat >/dev/null`, filepath.Dir(paths[0])}, names...)
		return exec.Command("sh", args...)
	}
	var ddSrc string
	dd := func(image string) *exec.Cmd {
		return exec.Command("dd", "if="+ddSrc, "of="+image, "bs=4M", "conv=fsync", "status=none")
	}
	// The source is read once, untimed, so dd copies from the page cache.
	prep := func() error {
		var err error
		if ddSrc, err = src(); err != nil {
			return err
		}
		return readFile(ddSrc)
	}
	return []contender{
		{key: "floors", name: "`tar -cf - \\| cat` of the tree (floor)", cmd: tar},
		{key: "floors", name: "`dd bs=4M conv=fsync` of an image of the same size (floor)", image: true, noFsck: true, cmd: dd, prep: prep},
	}
}

// floorSource returns ours' image kept by an earlier contender, else writes
// one in-process (untimed): dd's source, the size of ours.
func floorSource(ctx context.Context, kept string, paths []string, extra int64) func() (string, error) {
	return func() (string, error) {
		if _, err := os.Stat(kept); err == nil {
			return kept, nil
		}
		logf("    writing ours' image for the dd floor (untimed)")
		return kept, writeOurs(ctx, kept, paths, extra)
	}
}

func readFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	// A plain loop: io.Discard's ReadFrom would read in 8 KiB bites.
	buf := make([]byte, 4<<20)
	for {
		if _, err := f.Read(buf); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}
