package atomicedit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/killtest"

	"golang.org/x/sys/unix"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// sparseFile makes a 64 MiB file with data at 0, 16 MiB and 40 MiB and
// holes between.
func sparseFile(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "disk.img")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, off := range []int64{0, 16 << 20, 40 << 20} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 1<<20), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	return p
}

func sum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestEditReplacesKeepingHolesAndMode(t *testing.T) {
	dir := t.TempDir()
	p := sparseFile(t, dir)
	before := allocated(t, p)
	err := Edit(context.Background(), p, func(_ context.Context, c string) error {
		f, err := os.OpenFile(c, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteAt([]byte("edited"), 16<<20)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 64<<20 || string(b[16<<20:16<<20+6]) != "edited" || b[0] != 1 || b[40<<20] != 3 || b[8<<20] != 0 {
		t.Fatal("the replaced file is not the edited copy")
	}
	if after := allocated(t, p); after > before+1<<20 {
		t.Errorf("the copy allocates %d bytes, the original %d: holes were filled", after, before)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	if n := names(t, dir); len(n) != 1 {
		t.Errorf("directory holds %v, want only the file", n)
	}
}

// An edit that fails, or is cancelled, leaves the input as it was and
// nothing beside it.
func TestEditFailureLeavesInput(t *testing.T) {
	for _, cancel := range []bool{false, true} {
		t.Run(fmt.Sprintf("cancel=%v", cancel), func(t *testing.T) {
			dir := t.TempDir()
			p := sparseFile(t, dir)
			want := sum(t, p)
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			err := Edit(ctx, p, func(ctx context.Context, c string) error {
				if err := os.WriteFile(c, []byte("half"), 0); err != nil {
					return err
				}
				if cancel {
					stop()
					return nil // the edit finished, but too late
				}
				return errors.New("refused")
			})
			if err == nil {
				t.Fatal("no error")
			}
			if sum(t, p) != want {
				t.Error("the input changed")
			}
			if n := names(t, dir); len(n) != 1 {
				t.Errorf("directory holds %v, want only the file", n)
			}
		})
	}
}

// childEnv makes the test binary a process that edits a file slowly, to
// be killed.
const childEnv = "ATOMICEDIT_TEST_CHILD"

func TestMain(m *testing.M) {
	if p := os.Getenv(childEnv); p != "" {
		err := Edit(context.Background(), p, func(_ context.Context, c string) error {
			f, err := os.OpenFile(c, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			for i := int64(0); i < 64; i++ {
				if _, err := f.WriteAt(bytes.Repeat([]byte{0xAB}, 1<<20), i<<20); err != nil {
					return err
				}
				if err := f.Sync(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// kill -9 at any moment leaves the input or the finished output, and
// (the copy being unnamed until the rename) nothing else.
func TestKillAtManyPoints(t *testing.T) {
	dir := t.TempDir()
	orig := sparseFile(t, dir)
	in := sum(t, orig)
	out := sha256.Sum256(bytes.Repeat([]byte{0xAB}, 64<<20))

	run := func(delay time.Duration) bool { return killtest.Run(t, childEnv+"="+orig, delay) }
	// The shortest of three whole runs: a busy machine makes one long,
	// and kill points past the end would test nothing.
	full := time.Hour
	for i := 0; i < 3; i++ {
		start := time.Now()
		run(time.Hour)
		full = min(full, time.Since(start))
	}
	if sum(t, orig) != out {
		t.Fatal("an edit left to finish did not produce the output")
	}
	kills := 0
	for i := 0; i < 24; i++ {
		if err := os.Remove(orig); err != nil {
			t.Fatal(err)
		}
		orig = sparseFile(t, dir)
		if run(full * time.Duration(i) / 20) {
			kills++
		}
		switch got := sum(t, orig); got {
		case in, out:
		default:
			t.Fatalf("killed after %v: the file is neither input nor output", full*time.Duration(i)/20)
		}
		for _, n := range names(t, dir) {
			if n != "disk.img" {
				// Only the instant between naming the copy and the rename
				// can leave one; report it, it is not the input's loss.
				if !strings.HasPrefix(n, ".disk.img.edit-") {
					t.Fatalf("killed: %s left beside the file", n)
				}
				t.Logf("killed between link and rename: %s left", n)
				os.Remove(filepath.Join(dir, n))
			}
		}
	}
	if kills < 8 {
		t.Errorf("only %d of 24 runs were killed before finishing (a full run takes %v): the test did not test", kills, full)
	}
	t.Logf("%d runs killed at points through a %v edit", kills, full)
}

// On a filesystem that shares blocks the copy is a clone: the edit costs
// the blocks it changes, not the image's size.
func TestEditClones(t *testing.T) {
	dir := imagecheck.ReflinkDir(t)
	p := filepath.Join(dir, "disk.img")
	data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var shared int64
	err := Edit(context.Background(), p, func(_ context.Context, c string) error {
		f, err := os.Open(c)
		if err != nil {
			return err
		}
		defer f.Close()
		shared = imagecheck.SharedBytes(t, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if shared < int64(len(data)) {
		t.Errorf("the copy shares %d of %d bytes with the original: it was copied, not cloned", shared, len(data))
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
		t.Error("the replaced file differs from the original")
	}
}
