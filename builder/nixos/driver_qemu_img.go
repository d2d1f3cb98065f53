package nixos

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// QemuImg is the part of qemu-img the builder uses.
type QemuImg interface {
	Convert(ctx context.Context, src, dst, format string) error
}

// QemuImgDriver runs the qemu-img program.
type QemuImgDriver struct{ Path string }

func (d QemuImgDriver) Convert(ctx context.Context, src, dst, format string) error {
	bin := d.Path
	if bin == "" {
		bin = "qemu-img"
	}
	// -S keeps zero runs sparse; -f raw so qemu-img never guesses a format
	// from the image's first bytes.
	cmd := exec.CommandContext(ctx, bin, "convert", "-q", "-f", "raw", "-O", format, "-S", "4k", src, dst)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("qemu-img convert to %s: %v: %s", format, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
