package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{nil, 0},
		{[]time.Duration{3, 1, 2}, 2},
		{[]time.Duration{4, 1, 3, 2}, 2}, // (2+3)/2 in integer nanoseconds
	} {
		r := &row{times: tc.in}
		if got := r.median(); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestReasonSkipsWrappers(t *testing.T) {
	out := []byte("Populating partition 0 with files.\nFailed to copy '/': No space left on device\n(sd-copy) failed with exit status 1.\n")
	if got, want := reason(errors.New("exit status 1"), out), "Failed to copy '/': No space left on device"; got != want {
		t.Errorf("reason = %q, want %q", got, want)
	}
}

func TestTimeCell(t *testing.T) {
	if got := timeCell(&row{timedOut: true, timeout: 300 * time.Second}); got != "> 300 s" {
		t.Errorf("timed out: %q", got)
	}
	if got := timeCell(&row{err: "a|b", unavailable: true}); got != `n/a (a\|b)` {
		t.Errorf("unavailable: %q", got)
	}
}

func TestGenTree(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	flat, err := genTree(dir, 2400)
	if err != nil {
		t.Fatal(err)
	}
	st, err := readTree([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	// root, flat/, parts/, two part directories, and the files
	if flat != 600 || st.entries != 2400+5 {
		t.Errorf("flat %d entries %d", flat, st.entries)
	}
}

func TestParseInstall(t *testing.T) {
	out := []byte(`==> nixos-image.bench: Wrote 12 store paths: 720 files, 78 directories, 548 symlinks, 0 hard links, 76.8 MiB into a 102.0 MiB image in 371ms
==> nixos-image.bench: installer: [agent] exec ["/nix/var/nix/profiles/system/activate"] in /mnt: exit status 0 (138ms)
==> nixos-image.bench: Installed in 1m8.8s (boot 6.8s, activation 200ms, boot loader 1m1.6s, shutdown 0s)
`)
	run, err := parseInstall(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Duration{"boot": 6800 * time.Millisecond, "activation": 200 * time.Millisecond,
		"boot loader": 61600 * time.Millisecond, "shutdown": 0}
	if run.write != 371*time.Millisecond || run.guest != 68800*time.Millisecond {
		t.Errorf("write %v guest %v", run.write, run.guest)
	}
	for k, v := range want {
		if run.phases[k] != v {
			t.Errorf("%s: %v, want %v", k, run.phases[k], v)
		}
	}
	if _, err := parseInstall(out[:100]); err == nil {
		t.Error("no Installed line: no error")
	}
}

func TestProcStatSelf(t *testing.T) {
	comm, ppid, ok := procStat(os.Getpid())
	if !ok || ppid != os.Getppid() || comm == "" {
		t.Errorf("procStat(self) = %q, %d, %v; ppid is %d", comm, ppid, ok, os.Getppid())
	}
	if hwm, ok := vmHWM(os.Getpid()); !ok || hwm <= 0 {
		t.Errorf("vmHWM(self) = %d, %v", hwm, ok)
	}
}

func TestMedianRun(t *testing.T) {
	r := &installRow{runs: []installRun{{guest: 3, write: 1}, {guest: 1, write: 2}, {guest: 2, write: 3}, {guest: 4}}}
	if got := r.medianRun(); got.guest != 2 || got.write != 3 {
		t.Errorf("medianRun = %+v", got)
	}
}

// A failure on the terminal comes with packer's colours; the table's cell
// must not.
func TestReasonStripsColours(t *testing.T) {
	out := []byte("\x1b[1;31mBuild 'nixos-image.bench' errored after 1 second: store_paths: bad\x1b[0m\r\n\r\n==> Wait completed\r\n")
	if got, want := reason(errors.New("exit status 1"), out), "Build 'nixos-image.bench' errored after 1 second: store_paths: bad"; got != want {
		t.Errorf("reason = %q, want %q", got, want)
	}
}
