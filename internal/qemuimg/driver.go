package qemuimg

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
)

// Driver is what this plugin asks of qemu-img. ExecDriver is the real
// one; tests give a fake that needs no qemu-img.
type Driver interface {
	// Convert converts src (read as srcFormat) to dst as s says, calling
	// progress with the percentage done.
	Convert(ctx context.Context, s Spec, src, srcFormat, dst string, progress func(pct float64)) error
	// Info says what path, read as format, holds.
	Info(ctx context.Context, path, format string) (Info, error)
}

// ExecDriver runs the qemu-img program: Path, or qemu-img from PATH.
type ExecDriver struct{ Path string }

var _ Driver = ExecDriver{}

func (d ExecDriver) bin() string {
	if d.Path == "" {
		return "qemu-img"
	}
	return d.Path
}

// Convert converts src to dst, calling progress with the percentage done
// as qemu-img reports it.
func (d ExecDriver) Convert(ctx context.Context, s Spec, src, srcFormat, dst string, progress func(pct float64)) error {
	cmd := exec.CommandContext(ctx, d.bin(), s.Args(src, srcFormat, dst)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu-img: %w", err)
	}
	readProgress(out, progress)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("qemu-img convert to %s: %v: %s", s.Name, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// readProgress parses qemu-img -p's "    (12.34/100%)" records, which it
// separates with carriage returns.
func readProgress(r io.Reader, progress func(float64)) {
	sc := bufio.NewScanner(r)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "(") || !strings.HasSuffix(line, "/100%)") {
			continue
		}
		if pct, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(line, "("), "/100%)"), 64); err == nil && progress != nil {
			progress(pct)
		}
	}
}

// Info is what qemu-img info says of an image.
type Info struct {
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
}

// Info runs qemu-img info on path read as format (never guessed).
func (d ExecDriver) Info(ctx context.Context, path, format string) (Info, error) {
	out, err := exec.CommandContext(ctx, d.bin(), "info", "-f", format, "--output=json", path).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return Info{}, fmt.Errorf("qemu-img info %s: %s", path, strings.TrimSpace(string(ee.Stderr)))
		}
		return Info{}, fmt.Errorf("qemu-img info: %w", err)
	}
	var i Info
	if err := json.Unmarshal(out, &i); err != nil {
		return Info{}, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return i, nil
}
