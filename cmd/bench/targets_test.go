package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func okRow(name string, d time.Duration, rss int64) *row {
	return &row{name: name, times: []time.Duration{d}, rss: rss}
}

// The debian targets compare every packer row, not the in-process writer,
// with mkfs.ext4 -d and the dd floor.
func TestTargetsDebian(t *testing.T) {
	term := okRow("terminal", 2*time.Second, 40<<20)
	plain := okRow("plain", 1400*time.Millisecond, 70<<20)
	res := &fixtureResult{name: "debian", packer: []*row{term, plain},
		mkfs: okRow("mkfs", 2500*time.Millisecond, 0), dd: okRow("dd", 1500*time.Millisecond, 0)}
	got := strings.Join(targets(res), "\n")
	for _, want := range []string{
		"| debian, terminal ≤ 0.7 × `mkfs.ext4 -d` | 2.00 s / 2.50 s = 0.80 | no |",
		"| debian, terminal ≤ 1.3 × the `dd conv=fsync` floor | 2.00 s / 1.50 s = 1.33 | no |",
		"| debian, terminal: plugin peak RSS ≤ 64 MiB | 40 MiB | yes |",
		"| debian, plain ≤ 0.7 × `mkfs.ext4 -d` | 1.40 s / 2.50 s = 0.56 | yes |",
		"| debian, plain ≤ 1.3 × the `dd conv=fsync` floor | 1.40 s / 1.50 s = 0.93 | yes |",
		"| debian, plain: plugin peak RSS ≤ 64 MiB | 70 MiB | no |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("targets lack\n%s\ngot\n%s", want, got)
		}
	}
	res = &fixtureResult{name: "bench200k", packer: []*row{term}, mkfsN: &row{timedOut: true}}
	if got := strings.Join(targets(res), "\n"); !strings.Contains(got, "≤ 0.1 × `mkfs.ext4 -N -d` | not measured |") {
		t.Errorf("bench200k without mkfs -N:\n%s", got)
	}
}

func TestClosureRSSTargets(t *testing.T) {
	for _, tc := range []struct {
		small, large int64
		met          string
	}{
		{38 << 20, 46 << 20, "yes"},
		{38 << 20, 46<<20 + 1, "no"},
		{46 << 20, 38 << 20, "yes"},
	} {
		rows := []*rssRow{{name: "tiny64", r: okRow("", time.Second, tc.small)}, {name: "large4g", r: okRow("", time.Second, tc.large)}}
		got := closureRSSTargets(rows)
		if last := got[len(got)-1]; !strings.HasSuffix(last, "| "+tc.met+" |") {
			t.Errorf("%d vs %d: %s, want %s", tc.small, tc.large, last, tc.met)
		}
	}
}

// compare must notice an image that changed between runs.
func TestParallelCompare(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write := func(name, s string) {
		if err := os.WriteFile(name, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(a, "one")
	write(b, "two")
	p := &parResult{digests: map[string]string{}}
	names, images := []string{"a", "b"}, []string{a, b}
	for run := 1; run <= 2; run++ {
		if err := p.compare(names, images, "parallel", run); err != nil {
			t.Fatal(err)
		}
	}
	if p.mismatch != "" {
		t.Fatalf("same images: mismatch %q", p.mismatch)
	}
	write(b, "tw0")
	if err := p.compare(names, images, "one after another", 1); err != nil {
		t.Fatal(err)
	}
	if p.mismatch != "b (one after another run 1)" {
		t.Errorf("mismatch %q", p.mismatch)
	}
	os.Remove(a)
	if err := p.compare(names, images, "parallel", 3); err == nil {
		t.Error("a missing image: no error")
	}
}
