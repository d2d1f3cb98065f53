package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// rssFixtures: the same shape (four files of dense data), 64 MiB and 4 GiB.
var rssFixtures = []string{"tiny64", "large4g"}

// closureRSSSpread: how far the plugin's peak RSS may move from the 64 MiB
// closure to the 4 GiB one (the "within 8 MiB").
const closureRSSSpread = 8 << 20

type rssRow struct {
	name  string
	paths int
	bytes int64
	r     *row
}

// benchClosureRSS times `packer build` of the two closures (store-only,
// layout none, the first -ui mode) and keeps the plugin's peak RSS.
func benchClosureRSS(ctx context.Context, c config) []*rssRow {
	var rows []*rssRow
	for _, name := range rssFixtures {
		rr := &rssRow{name: name, r: &row{name: name}}
		rows = append(rows, rr)
		if err := closureRSS(ctx, c, rr); err != nil {
			rr.r.err = err.Error()
			logf("rss %s: %v", name, err)
		}
	}
	return rows
}

func closureRSS(ctx context.Context, c config, rr *rssRow) error {
	logf("rss %s: resolving the closure", rr.name)
	roots, err := fixtureRoots(rr.name)
	if err != nil {
		return err
	}
	paths, err := closureOf(roots)
	if err != nil {
		return err
	}
	rr.paths = len(paths)
	st, err := readTree(paths) // warm the page cache, as for the writers
	if err != nil {
		return err
	}
	rr.bytes = st.bytes
	dir := filepath.Join(c.tmp, "rss-"+rr.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer removeAll(dir)
	b, err := newStoreBuild(c, dir, roots, st.bytes*int64(c.extraPct)/100)
	if err != nil {
		return err
	}
	*rr.r = *measure(ctx, c, b.contender(c.ui[0]), filepath.Join(dir, "image.raw"))
	if rr.r.err != "" {
		return fmt.Errorf("%s", rr.r.err)
	}
	return nil
}

func printClosureRSS(w io.Writer, c config, rows []*rssRow) {
	fmt.Fprintf(w, "### plugin peak RSS against closure size\n\n")
	fmt.Fprintf(w, "`packer build` (%s), store-only, layout none; wall time the median of %d runs up to the image's fsync, peak RSS the largest VmHWM of the plugin's processes over the runs.\n\n",
		c.ui[0].label(), c.runs)
	fmt.Fprintln(w, "| closure | data | `packer build` | plugin peak RSS | image size (allocated) | e2fsck -fn |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|---|")
	for _, rr := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", rr.name, human(rr.bytes), timeCell(rr.r), human(rr.r.rss), sizeCell(rr.r), orDash(rr.r.fsck))
	}
	fmt.Fprintln(w)
}

func closureRSSTargets(rows []*rssRow) []string {
	var out []string
	for _, rr := range rows {
		target := fmt.Sprintf("%s: plugin peak RSS ≤ %s", rr.name, human(rssLimit))
		if !rr.r.ok() {
			out = append(out, fmt.Sprintf("| %s | not measured | — |", target))
			continue
		}
		out = append(out, verdictRow(target, human(rr.r.rss), rr.r.rss <= rssLimit))
	}
	small, large := rows[0], rows[1]
	target := fmt.Sprintf("plugin peak RSS: %s within %s of %s", large.name, human(closureRSSSpread), small.name)
	if !small.r.ok() || !large.r.ok() {
		return append(out, fmt.Sprintf("| %s | not measured | — |", target))
	}
	d := large.r.rss - small.r.rss
	measured := fmt.Sprintf("%.1f MiB − %.1f MiB = %+.1f MiB", mib(large.r.rss), mib(small.r.rss), mib(d))
	return append(out, verdictRow(target, measured, max(d, -d) <= closureRSSSpread))
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
