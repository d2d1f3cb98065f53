package agent

import (
	"fmt"
	"os"
	"path/filepath"
)

// writebackSettings make the installed image independent of the VM's memory
// size and of time. ext4 allocates a delayed-allocation file's blocks when
// its pages are written back, so where the guest's new files land depends
// on when writeback runs: by default every 5 s (dirty_writeback_centisecs)
// and once dirty pages pass a share of the VM's memory
// (dirty_background_ratio), so two installs with different mem_size placed
// the same files in different blocks. With periodic writeback off and the
// thresholds fixed in bytes, far above what an installer dirties, blocks
// are allocated at the points the install itself chooses (fsync, rename
// over a file, unmount), in the order the programs wrote.
var writebackSettings = []struct{ name, value string }{
	{"dirty_writeback_centisecs", "0"},
	{"dirty_expire_centisecs", "8640000"}, // a day
	{"dirty_background_bytes", fmt.Sprint(int64(1) << 40)},
	{"dirty_bytes", fmt.Sprint(int64(1) << 40)},
}

// setWriteback applies writebackSettings under procVM (/proc/sys/vm).
func setWriteback(procVM string) error {
	for _, s := range writebackSettings {
		if err := os.WriteFile(filepath.Join(procVM, s.name), []byte(s.value), 0); err != nil {
			return fmt.Errorf("setting vm.%s = %s: %w", s.name, s.value, err)
		}
	}
	return nil
}
