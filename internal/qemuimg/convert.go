// Package qemuimg turns disk images from one container format into another
// with qemu-img, the tool users trust for it, reporting progress as it
// goes. The builder's `format` and the nixos-convert post-processor share it.
package qemuimg

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// ConvertTo converts src to the file final with d: in a staging directory
// beside it, under final's own base name (which vmdk records inside the
// image), then renamed, so that only a complete image ever carries final's
// name. finish, when not nil, runs on the staged file before the rename.
// The staging directory is gone when ConvertTo returns.
func ConvertTo(ctx context.Context, d Driver, s Spec, src, srcFormat, final string, progress func(float64), finish func(staged string) error) error {
	stage := filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+".partial")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return fmt.Errorf("staging the conversion: %w", err)
	}
	defer os.RemoveAll(stage)
	staged := filepath.Join(stage, filepath.Base(final))
	if err := d.Convert(ctx, s, src, srcFormat, staged, progress); err != nil {
		return err
	}
	if finish != nil {
		if err := finish(staged); err != nil {
			return err
		}
	}
	return os.Rename(staged, final)
}
