package main

import (
	"errors"
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
