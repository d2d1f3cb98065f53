package main

import (
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// reason condenses a failure to one line: the last that names an error,
// skipping wrappers' "failed with exit status" lines, else the last line.
func reason(err error, out []byte) string {
	out = ansiEscape.ReplaceAll(out, nil) // packer's colours on a terminal
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	pick := ""
	for i := len(lines) - 1; i >= 0 && pick == ""; i-- {
		l := strings.TrimSpace(lines[i])
		ll := strings.ToLower(l)
		if strings.Contains(ll, "exit status") {
			continue
		}
		for _, w := range []string{"fail", "error", "could not", "can't", "cannot", "no space", "refusing"} {
			if strings.Contains(ll, w) {
				pick = l
				break
			}
		}
	}
	for i := len(lines) - 1; i >= 0 && pick == ""; i-- {
		pick = strings.TrimSpace(lines[i])
	}
	if pick == "" {
		return err.Error()
	}
	if len(pick) > 120 {
		pick = pick[:117] + "..."
	}
	return pick
}

var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;?]*[A-Za-z]")

var fsckFiles = regexp.MustCompile(`(\d+)/\d+ files`)

// fsck checks an image read-only with e2fsck, untimed: a fast writer of
// broken filesystems would win nothing. The inode count shows whether every
// tool stored the same tree.
func fsck(image string, offset int64) string {
	name := image
	if offset != 0 {
		name += "?offset=" + strconv.FormatInt(offset, 10)
	}
	out, err := exec.Command("e2fsck", "-fn", name).CombinedOutput()
	used := ""
	if m := fsckFiles.FindSubmatch(out); m != nil {
		used = ", " + string(m[1]) + " inodes"
	}
	if err != nil {
		logf("    e2fsck -fn %s: %v\n%s", name, err, tail(out, 20))
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Sprintf("errors (exit %d)%s", ee.ExitCode(), used)
		}
		return "not run (" + err.Error() + ")"
	}
	return "clean" + used
}

func cannotRunHere(err error, out []byte) bool {
	if errors.Is(err, exec.ErrNotFound) {
		return true
	}
	o := strings.ToLower(string(out))
	for _, s := range []string{"loop device", "loopback", "failed to mount", "operation not permitted", "permission denied"} {
		if strings.Contains(o, s) {
			return true
		}
	}
	return false
}

func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "      " + strings.Join(lines, "\n      ")
}
