package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Targets from issue 12, all through `packer build`.
const (
	debianMkfsRatio = 0.7 // ours ≤ 0.7 × mkfs.ext4 -d on the real tree
	debianDDRatio   = 1.3 // ours ≤ 1.3 × the dd conv=fsync floor of the same image size
	bench200kRatio  = 0.1 // ours ≤ 0.1 × mkfs.ext4 -N -d on bench200k
	rssLimit        = 64 << 20
)

func printTable(w io.Writer, res *fixtureResult) {
	sz := human(res.size)
	fmt.Fprintf(w, "### %s: %d store paths, %d entries, %s of file data\n\n", res.name, res.paths, res.entries, human(res.bytes))
	fmt.Fprintf(w, "Filesystem %s with %d inodes for every other writer (the tree with its own hard links); ours (layout none, raw) plans its own with the same free space, "+
		"smaller where identical files become one inode. Wall time is the median of %d runs, warm cache, up to the image's fsync. "+
		"Ours is a real `packer build` with the plugin built from this tree (over RPC, progress bar on): on a terminal, and with stdout a pipe as in CI; "+
		"its peak RSS is the plugin process's, and the in-process column is the same writer called directly, without Packer.\n\n",
		sz, res.inodes, res.runs)
	fmt.Fprintln(w, "| tool | wall time | × ours | in-process | peak RSS | image size (allocated) | e2fsck -fn |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|---|")
	for _, r := range res.rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.name, timeCell(r), ratioCell(r, res.ours), inprocCell(r), human(r.rss), sizeCell(r), orDash(r.fsck))
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

func inprocCell(r *row) string {
	if r.inproc == nil {
		return "—"
	}
	if !r.inproc.ok() {
		return timeCell(r.inproc)
	}
	return fmt.Sprintf("%s, %s", timeCell(r.inproc), human(r.inproc.rss))
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

// verdictRow is one Markdown row of the targets table.
func verdictRow(target, measured string, met bool) string {
	v := "no"
	if met {
		v = "yes"
	}
	return fmt.Sprintf("| %s | %s | %s |", target, measured, v)
}

// targets returns the Markdown rows of the targets this fixture
// speaks to, for every UI mode of `packer build`.
func targets(res *fixtureResult) []string {
	var out []string
	if len(res.packer) == 0 {
		return []string{fmt.Sprintf("| %s: targets | ours not run through `packer build` (-only) | — |", res.name)}
	}
	vs := func(target string, o, peer *row, limit float64) {
		if peer == nil || !peer.ok() {
			out = append(out, fmt.Sprintf("| %s | not measured | — |", target))
			return
		}
		x := o.median().Seconds() / peer.median().Seconds()
		out = append(out, verdictRow(target, fmt.Sprintf("%s / %s = %.2f", dur(o.median()), dur(peer.median()), x), x <= limit))
	}
	for _, o := range res.packer {
		if !o.ok() {
			out = append(out, fmt.Sprintf("| %s: %s | did not finish | — |", res.name, o.name))
			continue
		}
		switch res.name {
		case "debian":
			vs(fmt.Sprintf("debian, %s ≤ %.1f × `mkfs.ext4 -d`", o.name, debianMkfsRatio), o, res.mkfs, debianMkfsRatio)
			vs(fmt.Sprintf("debian, %s ≤ %.1f × the `dd conv=fsync` floor", o.name, debianDDRatio), o, res.dd, debianDDRatio)
		case "bench200k":
			vs(fmt.Sprintf("bench200k, %s ≤ %.1f × `mkfs.ext4 -N -d`", o.name, bench200kRatio), o, res.mkfsN, bench200kRatio)
		}
		out = append(out, verdictRow(fmt.Sprintf("%s, %s: plugin peak RSS ≤ %s", res.name, o.name, human(rssLimit)), human(o.rss), o.rss <= rssLimit))
	}
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
