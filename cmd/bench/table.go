package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Targets from the issue.
const (
	debianRatio    = 0.7 // ours ≤ 0.7 × fastest peer on debian
	bench200kRatio = 0.2 // ours ≤ 0.2 × mkfs.ext4 -N -d on bench200k
	rssLimit       = 64 << 20
)

func printTable(w io.Writer, res *fixtureResult) {
	sz := human(res.size)
	fmt.Fprintf(w, "### %s: %d store paths, %d entries, %s of file data\n\n", res.name, res.paths, res.entries, human(res.bytes))
	fmt.Fprintf(w, "Filesystem %s with %d inodes for every image writer; wall time is the median of %d runs, warm cache, up to the image's fsync.\n\n",
		sz, res.inodes, res.runs)
	fmt.Fprintln(w, "| tool | wall time | × ours | peak RSS | image size (allocated) | e2fsck -fn |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|---|")
	for _, r := range res.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.name, timeCell(r), ratioCell(r, res.ours), human(r.rss), sizeCell(r), orDash(r.fsck))
	}
	fmt.Fprintln(w)
}

func timeCell(r *row) string {
	switch {
	case r.timedOut:
		return "> " + dur(r.timeout)
	case r.err != "" && r.unavailable:
		return "n/a (" + mdEscape(r.err) + ")"
	case r.err != "":
		return "fails (" + mdEscape(r.err) + ")"
	}
	s := dur(r.median())
	if r.note != "" {
		s += " (" + r.note + ")"
	}
	return s
}

func ratioCell(r, ours *row) string {
	if ours == nil || !ours.ok() {
		return "—"
	}
	o := ours.median().Seconds()
	switch {
	case r.timedOut:
		return fmt.Sprintf("> %.0f", r.timeout.Seconds()/o)
	case !r.ok():
		return "—"
	}
	return ratio(r.median().Seconds() / o)
}

func ratio(x float64) string {
	if x >= 10 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.2f", x)
}

func sizeCell(r *row) string {
	if r.size == 0 {
		return "—"
	}
	return fmt.Sprintf("%s (%s)", human(r.size), human(r.alloc))
}

// targets returns the Markdown rows of the targets this fixture
// speaks to.
func targets(res *fixtureResult) []string {
	var out []string
	add := func(target, measured string, met bool) {
		v := "no"
		if met {
			v = "yes"
		}
		out = append(out, fmt.Sprintf("| %s | %s | %s |", target, measured, v))
	}
	o := res.ours
	if o == nil || !o.ok() {
		return []string{fmt.Sprintf("| %s: ours | not measured | — |", res.name)}
	}
	switch res.name {
	case "debian":
		var best *row
		for _, p := range res.peers {
			if p.ok() && (best == nil || p.median() < best.median()) {
				best = p
			}
		}
		target := fmt.Sprintf("debian: ours ≤ %.1f × fastest peer", debianRatio)
		if best == nil {
			out = append(out, fmt.Sprintf("| %s | no peer finished | — |", target))
			break
		}
		x := o.median().Seconds() / best.median().Seconds()
		add(target, fmt.Sprintf("%s / %s (%s) = %.2f", dur(o.median()), dur(best.median()), best.name, x), x <= debianRatio)
	case "bench200k":
		target := fmt.Sprintf("bench200k: ours ≤ %.1f × mkfs.ext4 -N -d", bench200kRatio)
		if res.mkfsN == nil || !res.mkfsN.ok() {
			out = append(out, fmt.Sprintf("| %s | mkfs.ext4 -N -d did not finish | — |", target))
			break
		}
		x := o.median().Seconds() / res.mkfsN.median().Seconds()
		add(target, fmt.Sprintf("%s / %s = %.2f", dur(o.median()), dur(res.mkfsN.median()), x), x <= bench200kRatio)
	}
	add(fmt.Sprintf("%s: peak RSS of ours ≤ %s", res.name, human(rssLimit)), human(o.rss), o.rss <= rssLimit)
	return out
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func dur(d time.Duration) string {
	switch {
	case d >= 100*time.Second:
		return fmt.Sprintf("%.0f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// mdEscape keeps a tool's message from breaking the table.
func mdEscape(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}
