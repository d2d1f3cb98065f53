package nixos

import (
	"context"
	"fmt"
	"os/exec"
)

// CpDriver runs coreutils' cp.
type CpDriver struct{}

func (CpDriver) CopyTree(ctx context.Context, src, dst string) error {
	if out, err := exec.CommandContext(ctx, "cp", "-r", "--no-preserve=mode,ownership,timestamps", "--", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}
