package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// parSource is one source of the parallel section's template.
type parSource struct {
	name, layout string // layout: store-only sources only
	install      bool
}

// parallelStore: the store-only sources, one closure in three layouts.
var parallelStore = []parSource{{name: "store-none", layout: "none"}, {name: "store-efi", layout: "efi"}, {name: "store-legacy", layout: "legacy"}}

type parResult struct {
	fixture string
	sources []parSource
	// par: -parallel-builds=0 (Packer's default, every source at once);
	// seq: -parallel-builds=1, one after another.
	par, seq  row
	pluginRSS int64
	// digests of each source's image from the first run; mismatch names
	// the first image that differed in a later run or the other mode.
	digests  map[string]string
	mismatch string
	err      string
}

// benchParallel builds one template with several sources (c.parallel's
// closure in three layouts, and the small test system installed under TCG)
// with one `packer build`, in parallel and one after another, c.runs times
// each, as CI would (plain UI). Every image must come out the same both
// ways: sources that shared a temporary file, socket or lock by accident
// would clash in parallel.
func benchParallel(ctx context.Context, c config) *parResult {
	p := &parResult{fixture: c.parallel, sources: parallelStore}
	if c.parInst {
		p.sources = append(p.sources, parSource{name: "install-bios", install: true})
	}
	if err := runParallel(ctx, c, p); err != nil {
		p.err = strings.ReplaceAll(err.Error(), c.tmp, "$TMP")
		logf("parallel: %v", err)
	}
	return p
}

func runParallel(ctx context.Context, c config, p *parResult) error {
	env, err := c.packerEnv()
	if err != nil {
		return err
	}
	logf("parallel: resolving %s", p.fixture)
	roots, err := fixtureRoots(p.fixture)
	if err != nil {
		return err
	}
	paths, err := closureOf(roots)
	if err != nil {
		return err
	}
	st, err := readTree(paths)
	if err != nil {
		return err
	}
	dir := filepath.Join(c.tmp, "parallel")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer removeAll(dir)
	var tmpl strings.Builder
	var names, images, outs []string
	for _, s := range p.sources {
		out := filepath.Join(dir, "out-"+s.name)
		if s.install {
			sys, err := fixtureRoots(installFixtures[0])
			if err != nil {
				return err
			}
			syspaths, err := closureOf(sys)
			if err != nil {
				return err
			}
			if _, err := readTree(syspaths); err != nil {
				return err
			}
			tmpl.WriteString(installSource(s.name, sys[0], out))
		} else {
			tmpl.WriteString(storeSource(s.name, roots, s.layout, st.bytes*int64(c.extraPct)/100, out))
		}
		tmpl.WriteString("\n")
		names, outs = append(names, s.name), append(outs, out)
		images = append(images, filepath.Join(out, imageFile))
	}
	tmpl.WriteString(buildBlock(names...))
	file := filepath.Join(dir, "parallel.pkr.hcl")
	if err := os.WriteFile(file, []byte(tmpl.String()), 0o644); err != nil {
		return err
	}
	p.par.name, p.seq.name = "parallel", "one after another"
	p.digests = map[string]string{}
	for i := 0; i < c.runs; i++ {
		modes := []*row{&p.par, &p.seq}
		if i%2 == 1 { // alternate, so neither always meets the other's writeback
			modes[0], modes[1] = modes[1], modes[0]
		}
		for _, r := range modes {
			n := "0"
			if r == &p.seq {
				n = "1"
			}
			for _, o := range outs {
				removeAll(o)
			}
			syscall.Sync()
			res, err := runPacker(ctx, packerRun{packer: c.packer, env: env, dir: dir, args: []string{"-parallel-builds=" + n, file},
				ui: uiPlain, images: images, limit: c.timeout})
			if errors.Is(err, context.DeadlineExceeded) {
				r.timedOut, r.timeout = true, c.timeout
				return fmt.Errorf("%s: over %s", r.name, dur(c.timeout))
			}
			if err != nil {
				logf("    %s run %d: failed: %v\n%s", r.name, i+1, err, tail(res.out, 30))
				return fmt.Errorf("%s: %s", r.name, reason(err, res.out))
			}
			r.times = append(r.times, res.elapsed)
			p.pluginRSS = max(p.pluginRSS, res.pluginRSS)
			logf("    %s run %d: %s, plugin peak RSS %s", r.name, i+1, dur(res.elapsed), human(res.pluginRSS))
			if err := p.compare(names, images, r.name, i+1); err != nil {
				return err
			}
		}
		if i+1 < c.runs && max(p.par.times[i], p.seq.times[i]) > longRun {
			p.par.note = fmt.Sprintf("%d run", i+1)
			p.seq.note = p.par.note
			break
		}
	}
	for _, o := range outs {
		removeAll(o)
	}
	return nil
}

// compare hashes each image (untimed, in parallel) and checks it against
// the first run's.
func (p *parResult) compare(names, images []string, mode string, run int) error {
	sums := make([]string, len(images))
	errs := make([]error, len(images))
	var wg sync.WaitGroup
	for i, img := range images {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sums[i], errs[i] = sha256File(img)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for i, n := range names {
		if first, ok := p.digests[n]; !ok {
			p.digests[n] = sums[i]
		} else if first != sums[i] && p.mismatch == "" {
			p.mismatch = fmt.Sprintf("%s (%s run %d)", n, mode, run)
			logf("    %s: image differs from the first run's (%s … %s)", n, first[:12], sums[i][:12])
		}
	}
	return nil
}

func sha256File(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func printParallel(w io.Writer, c config, p *parResult) {
	var desc []string
	for _, s := range p.sources {
		if s.install {
			desc = append(desc, fmt.Sprintf("%s (install mode, %s, legacy, TCG)", s.name, installFixtures[0]))
		} else {
			desc = append(desc, fmt.Sprintf("%s (store-only, %s, layout %s)", s.name, p.fixture, s.layout))
		}
	}
	fmt.Fprintf(w, "### parallel builds: one `packer build` of %d sources\n\n", len(p.sources))
	fmt.Fprintf(w, "Sources: %s. Non-terminal UI; wall time the median of %d runs, up to every image's fsync. "+
		"Every image is compared (sha256) with the first run's, across both modes.\n\n", strings.Join(desc, ", "), c.runs)
	fmt.Fprintln(w, "| `packer build` | wall time | plugin peak RSS | images identical |")
	fmt.Fprintln(w, "|---|--:|--:|---|")
	ident := "yes"
	switch {
	case p.err != "":
		ident = "—"
	case p.mismatch != "":
		ident = "no: " + p.mismatch
	}
	for i, r := range []*row{&p.par, &p.seq} {
		cell := timeCell(r)
		if p.err != "" && len(r.times) == 0 {
			cell = "fails (" + mdEscape(p.err) + ")"
		}
		fmt.Fprintf(w, "| %s (`-parallel-builds=%d`) | %s | %s | %s |\n", r.name, i, cell, human(p.pluginRSS), ident)
	}
	fmt.Fprintln(w)
}

func parallelTargets(p *parResult) []string {
	target := fmt.Sprintf("parallel: %d sources in one `packer build` make the same images as one after another", len(p.sources))
	if p.err != "" {
		return []string{fmt.Sprintf("| %s | fails (%s) | no |", target, mdEscape(p.err))}
	}
	measured := fmt.Sprintf("%d images identical over %d builds", len(p.sources), len(p.par.times)+len(p.seq.times))
	if p.mismatch != "" {
		measured = "differs: " + p.mismatch
	}
	out := []string{verdictRow(target, measured, p.mismatch == "")}
	pm, sm := p.par.median(), p.seq.median()
	out = append(out, verdictRow("parallel: faster than one after another",
		fmt.Sprintf("%s / %s = %.2f", dur(pm), dur(sm), pm.Seconds()/sm.Seconds()), pm < sm))
	return out
}
