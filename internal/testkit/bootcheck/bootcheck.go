// Package bootcheck is test support: it boots the host's Linux kernel under
// QEMU (TCG) with a tiny busybox initramfs, mounts a filesystem from a raw
// disk image read-only and reports the SHA-256 of chosen files. A real kernel
// reading our images is the oracle for the ext4, partition table and cpio
// (initrd) writers.
//
// Requirements on the host: qemu-system-x86_64, a kernel in /boot with its
// modules in /lib/modules/<version> (Debian's linux-image-amd64), and a
// static busybox (busybox-static).
package bootcheck

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultTimeout bounds a boot when ctx has no deadline; a TCG boot
	// normally takes 5-10 s.
	DefaultTimeout = 120 * time.Second
	// poweroffGrace is how long QEMU may take to exit after the final marker.
	poweroffGrace = 10 * time.Second
	consoleLimit  = 1 << 20 // console bytes kept for the caller
	errorTail     = 4 << 10 // console bytes quoted in errors
)

// Check describes one boot.
type Check struct {
	// Image is the raw disk image, attached read-only as the first virtio
	// disk (/dev/vda in the guest).
	Image string
	// Device is the guest block device holding the filesystem: "/dev/vda"
	// for a bare filesystem, "/dev/vdaN" for partition N (the kernel reads
	// GPT and MBR itself). Empty means "/dev/vda".
	Device string
	// Offset, when non-zero, is the byte offset of the filesystem inside
	// Device; the guest attaches a read-only loop device there. Leave it zero
	// when Device already names the partition.
	Offset int64
	// FSType is the filesystem type given to mount, and the kernel module
	// loaded for it. Empty means "ext4".
	FSType string
	// Files maps paths inside the mounted filesystem to their expected
	// SHA-256 in hex. Symlinks are followed inside the guest, where absolute
	// targets resolve against the initramfs, not the image.
	Files map[string]string
	// Commands are extra busybox sh commands run with the filesystem
	// mounted at /mnt as the working directory, after hashing. Their output
	// appears in the console between "BOOTCHECK-CMD-BEGIN i" and
	// "BOOTCHECK-CMD-END i <status>"; a non-zero status is not an error.
	Commands []string
	// Kernel is the vmlinuz to boot; empty means DefaultKernel(). Modules
	// come from /lib/modules/<version>, version taken from "vmlinuz-<version>".
	Kernel string
}

// Run boots the check and returns the guest console (CR-free, at most the
// last 1 MiB). The error is non-nil if the guest could not mount the
// filesystem, a file is missing or has another hash, or QEMU failed or
// timed out; it names each problem and quotes the end of the console.
func Run(ctx context.Context, c Check) (console string, err error) {
	files, want, err := c.prepare()
	if err != nil {
		return "", err
	}
	version := strings.TrimPrefix(filepath.Base(c.Kernel), "vmlinuz-")
	b, err := base(version, c.FSType)
	if err != nil {
		return "", err
	}
	initGz, err := initArchive(script(&c, files))
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp("", "bootcheck-*.initrd")
	if err != nil {
		return "", fmt.Errorf("bootcheck: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(append([]byte{}, b.gz...), initGz...))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("bootcheck: writing initrd: %w", err)
	}

	out, err := boot(ctx, c, tmp.Name())
	if err != nil {
		return out, err
	}
	return out, verify(out, files, want)
}

// prepare fills defaults and validates c, returning the file names in a
// stable order and the expected hashes in lower case.
func (c *Check) prepare() ([]string, map[string]string, error) {
	if c.Image == "" {
		return nil, nil, errors.New("bootcheck: Image is required")
	}
	if _, err := os.Stat(c.Image); err != nil {
		return nil, nil, fmt.Errorf("bootcheck: %w", err)
	}
	if c.Device == "" {
		c.Device = "/dev/vda"
	}
	if !strings.HasPrefix(c.Device, "/dev/") {
		return nil, nil, fmt.Errorf("bootcheck: Device %q is not a /dev path", c.Device)
	}
	if c.Offset < 0 {
		return nil, nil, fmt.Errorf("bootcheck: negative Offset %d", c.Offset)
	}
	if c.FSType == "" {
		c.FSType = "ext4"
	}
	if c.Kernel == "" {
		k, err := DefaultKernel()
		if err != nil {
			return nil, nil, err
		}
		c.Kernel = k
	}
	want := map[string]string{}
	for name, sum := range c.Files {
		// One console line per file: control characters would break it.
		if name == "" || strings.ContainsAny(name, "\n\r\x00") {
			return nil, nil, fmt.Errorf("bootcheck: invalid file name %q", name)
		}
		sum = strings.ToLower(sum)
		if len(sum) != 64 || strings.Trim(sum, "0123456789abcdef") != "" {
			return nil, nil, fmt.Errorf("bootcheck: %s: %q is not a hex SHA-256", name, sum)
		}
		want[name] = sum
	}
	return sortedKeys(want), want, nil
}

// boot runs QEMU until the guest prints its final marker, QEMU exits or ctx
// ends, and returns the console. QEMU is dead when boot returns.
func boot(ctx context.Context, c Check, initrdPath string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	// QEMU's option parser treats "," as a separator; a literal one is doubled.
	drive := "file=" + strings.ReplaceAll(c.Image, ",", ",,") + ",format=raw,if=virtio,readonly=on"
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-machine", "pc", "-smp", "1", "-m", "256",
		"-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio",
		"-no-reboot",
		"-kernel", c.Kernel, "-initrd", initrdPath,
		// panic=-1 turns an init failure into a reboot, which -no-reboot
		// turns into QEMU exiting.
		"-append", "console=ttyS0 panic=-1 quiet",
		"-drive", drive,
	)
	var stderr limitedBuffer
	stderr.max = errorTail
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", fmt.Errorf("bootcheck: %w", err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("bootcheck: starting qemu: %w", err)
	}

	var console limitedBuffer
	console.max = consoleLimit
	var final string
	var killer *time.Timer
	r := bufio.NewReader(stdout)
	for {
		line, rerr := r.ReadString('\n')
		line = strings.ReplaceAll(line, "\r", "")
		console.WriteString(line)
		if t := strings.TrimSpace(line); final == "" && (t == "BOOTCHECK-OK" || strings.HasPrefix(t, "BOOTCHECK-FAIL")) {
			final = t
			// The guest powers off next; kill QEMU if it lingers.
			killer = time.AfterFunc(poweroffGrace, func() { _ = cmd.Process.Kill() })
		}
		if rerr != nil {
			break
		}
	}
	werr := cmd.Wait()
	if killer != nil {
		killer.Stop()
	}
	out := console.String()
	elapsed := time.Since(start).Round(time.Millisecond)

	switch {
	case final == "BOOTCHECK-OK":
		return out, nil
	case final != "":
		return out, fmt.Errorf("bootcheck: guest reported %q after %v%s", strings.TrimPrefix(final, "BOOTCHECK-FAIL "), elapsed, quote(out))
	case ctx.Err() != nil:
		return out, fmt.Errorf("bootcheck: no result after %v: %w%s", elapsed, ctx.Err(), quote(out))
	default:
		return out, fmt.Errorf("bootcheck: qemu exited (%v) after %v without a result; stderr: %s%s", werr, elapsed, strings.TrimSpace(stderr.String()), quote(out))
	}
}

// verify compares the guest's BOOTCHECK-FILE lines with the expected hashes.
func verify(out string, files []string, want map[string]string) error {
	got := map[string]string{}
	missing := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "BOOTCHECK-FILE "); ok {
			// The hash is the last word; the name may contain spaces.
			if i := strings.LastIndexByte(rest, ' '); i > 0 {
				got[rest[:i]] = rest[i+1:]
			}
		} else if rest, ok := strings.CutPrefix(line, "BOOTCHECK-MISSING "); ok {
			missing[rest] = true
		}
	}
	var problems []string
	for _, name := range files {
		switch sum, ok := got[name]; {
		case missing[name]:
			problems = append(problems, fmt.Sprintf("%s: missing or not a regular file", name))
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: not reported by the guest", name))
		case sum != want[name]:
			problems = append(problems, fmt.Sprintf("%s: sha256 %s, want %s", name, sum, want[name]))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("bootcheck: %s%s", strings.Join(problems, "; "), quote(out))
	}
	return nil
}

func quote(console string) string {
	if len(console) > errorTail {
		console = "..." + console[len(console)-errorTail:]
	}
	return "\n--- console ---\n" + console
}

// limitedBuffer keeps the last max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - b.max; over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *limitedBuffer) WriteString(s string) { _, _ = io.WriteString(b, s) }

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
