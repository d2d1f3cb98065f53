// Package qemuimg turns disk images from one container format into another
// with qemu-img, the tool users trust for it, reporting progress as it
// goes; internal/diskout builds the formats users name on it.
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

// maxProgressRecord bounds one progress record; qemu-img's are about 20
// bytes, and longer ones are skipped, not buffered.
const maxProgressRecord = 256

// readProgress parses qemu-img -p's "    (12.34/100%)" records, which it
// separates with carriage returns. progress gets finite values within
// 0..100, never decreasing. r is read to its end whatever it holds, so
// qemu-img never blocks on a full pipe.
func readProgress(r io.Reader, progress func(float64)) {
	br := bufio.NewReader(r)
	rec := make([]byte, 0, maxProgressRecord)
	long := false // the current record is over the bound: skip it
	last := 0.0
	emit := func() {
		if pct, ok := parseProgress(rec); ok && !long && pct >= last && progress != nil {
			last = pct
			progress(pct)
		}
		rec, long = rec[:0], false
	}
	for {
		c, err := br.ReadByte()
		if err != nil {
			emit()
			io.Copy(io.Discard, br) // after a read error: drain what remains
			return
		}
		switch {
		case c == '\r' || c == '\n':
			emit()
		case len(rec) == maxProgressRecord:
			long = true
		default:
			rec = append(rec, c)
		}
	}
}

// parseProgress reads one record, "(12.34/100%)" with any spaces around.
func parseProgress(rec []byte) (float64, bool) {
	line := strings.TrimSpace(string(rec))
	if !strings.HasPrefix(line, "(") || !strings.HasSuffix(line, "/100%)") {
		return 0, false
	}
	pct, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(line, "("), "/100%)"), 64)
	if err != nil || !(pct >= 0 && pct <= 100) { // NaN fails both
		return 0, false
	}
	return pct, true
}

// Info is what qemu-img info says of an image.
type Info struct {
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
}

// maxInfoBytes bounds qemu-img info's JSON: a few hundred bytes for our
// formats, more with many snapshots or extents, never megabytes.
const maxInfoBytes = 4 << 20

// Info runs qemu-img info on path read as format (never guessed).
func (d ExecDriver) Info(ctx context.Context, path, format string) (Info, error) {
	cmd := exec.CommandContext(ctx, d.bin(), "info", "-f", format, "--output=json", path)
	var out, stderr limitedBuffer
	out.max, stderr.max = maxInfoBytes, 64<<10
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); ok {
			return Info{}, fmt.Errorf("qemu-img info %s: %s", path, strings.TrimSpace(stderr.String()))
		}
		return Info{}, fmt.Errorf("qemu-img info: %w", err)
	}
	if out.over {
		return Info{}, fmt.Errorf("qemu-img info %s: more than %d bytes of output", path, maxInfoBytes)
	}
	i, err := ParseInfo(out.Bytes())
	if err != nil {
		return Info{}, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return i, nil
}

// ParseInfo reads the JSON of qemu-img info --output=json. The format and
// the virtual size must be there, the size not negative.
func ParseInfo(b []byte) (Info, error) {
	var raw struct {
		Format      *string `json:"format"`
		VirtualSize *int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Info{}, err
	}
	switch {
	case raw.Format == nil || *raw.Format == "":
		return Info{}, fmt.Errorf("no format in qemu-img's answer")
	case raw.VirtualSize == nil:
		return Info{}, fmt.Errorf("no virtual-size in qemu-img's answer")
	case *raw.VirtualSize < 0:
		return Info{}, fmt.Errorf("virtual-size %d is negative", *raw.VirtualSize)
	}
	return Info{Format: *raw.Format, VirtualSize: *raw.VirtualSize}, nil
}

// limitedBuffer keeps the first max bytes written and discards the rest,
// so that the program never blocks and memory stays bounded.
type limitedBuffer struct {
	bytes.Buffer
	max  int
	over bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if k := l.max - l.Len(); k < len(p) {
		l.over = true
		l.Buffer.Write(p[:max(k, 0)])
		return len(p), nil
	}
	return l.Buffer.Write(p)
}
