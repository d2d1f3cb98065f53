package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The binary-cache section (issue 13): a store-only image straight from a
// signed HTTP cache on 127.0.0.1 (made by the real `nix copy --to
// file://…?compression=zstd`, served by the bench), against what a user
// without this builder does: `nix copy --from` the cache into a fresh
// store, then a build from a local store holding the closure (the host's,
// where the same closure already lies warm, as the fresh copy would be).

// cacheCompression is the cache's: zstd, as xz made by Nix 2.8's one thread
// takes minutes for the debian tree.
const cacheCompression = "zstd"

// cacheLimit is the target: ours ≤ 0.5 × (nix copy --from + a local build).
const cacheLimit = 0.5

type cacheResult struct {
	name       string
	paths      int
	bytes      int64
	cacheBytes int64 // the cache's NAR files
	ours       *row  // packer build from the cache
	copy       *row  // nix copy --from into a fresh store
	local      *row  // packer build from the local store
	setupErr   string
}

func benchCache(ctx context.Context, c config, name string) *cacheResult {
	res := &cacheResult{name: name}
	if err := benchCacheRun(ctx, c, res); err != nil {
		res.setupErr = strings.ReplaceAll(err.Error(), c.tmp, "$TMP")
		logf("cache %s: %v", name, err)
	}
	return res
}

func benchCacheRun(ctx context.Context, c config, res *cacheResult) error {
	roots, err := fixtureRoots(res.name)
	if err != nil {
		return err
	}
	paths, err := closureOf(roots)
	if err != nil {
		return err
	}
	res.paths = len(paths)
	st, err := readTree(paths)
	if err != nil {
		return err
	}
	res.bytes = st.bytes
	extra := st.bytes * int64(c.extraPct) / 100
	dir := filepath.Join(c.tmp, "cache-"+res.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer removeAll(dir)

	logf("cache %s: a signed zstd cache by nix copy (untimed)", res.name)
	sec, pub := filepath.Join(dir, "key.sec"), filepath.Join(dir, "key.pub")
	if out, err := exec.Command("nix-store", "--generate-binary-cache-key", "bench-cache-1", sec, pub).CombinedOutput(); err != nil {
		return fmt.Errorf("nix-store --generate-binary-cache-key: %v: %s", err, out)
	}
	pubKey, err := os.ReadFile(pub)
	if err != nil {
		return err
	}
	cacheDir := filepath.Join(dir, "cache")
	args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--to",
		"file://" + cacheDir + "?compression=" + cacheCompression + "&secret-key=" + sec}, roots...)
	if out, err := exec.Command("nix", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("nix copy --to: %v: %s", err, out)
	}
	res.cacheBytes = dirBytes(filepath.Join(cacheDir, "nar"))
	url, stop, err := serveDir(cacheDir)
	if err != nil {
		return err
	}
	defer stop()

	ui := c.ui[len(c.ui)-1] // the CI case
	image := filepath.Join(dir, "image.raw")
	keyLine := strings.TrimSpace(string(pubKey))
	fromCache, err := newStoreBuild(c, filepath.Join(dir, "from-cache"), roots, extra,
		fmt.Sprintf("  substituters         = [%q]", url), fmt.Sprintf("  trusted_public_keys  = [%q]", keyLine))
	if err != nil {
		return err
	}
	ct := fromCache.contender(ui)
	ct.name = "ours: `packer build` from the HTTP cache, " + ui.label()
	res.ours = measure(ctx, c, ct, image)

	// Every run copies into a new store, and none is removed before the
	// last run: on this machine, creating files right after removing a
	// large tree ran up to six times slower (ext4 busy freeing it), which
	// would time the removal, not nix.
	var fresh string
	runs := 0
	res.copy = measure(ctx, c, contender{key: "cache", name: "`nix copy --from` the HTTP cache into a fresh store",
		prep: func() error { runs++; fresh = filepath.Join(dir, fmt.Sprintf("fresh-%d", runs)); return nil },
		cmd: func(string) *exec.Cmd {
			args := append([]string{"--extra-experimental-features", "nix-command", "copy",
				"--option", "trusted-public-keys", keyLine, "--from", url, "--to", fresh}, roots...)
			return exec.Command("nix", args...)
		}}, image)

	local, err := newStoreBuild(c, filepath.Join(dir, "local"), roots, extra)
	if err != nil {
		return err
	}
	ct = local.contender(ui)
	ct.name = "then ours: `packer build` from the local store, " + ui.label()
	res.local = measure(ctx, c, ct, image)
	return nil
}

// serveDir serves dir over HTTP on 127.0.0.1 until stop.
func serveDir(dir string) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	return "http://" + l.Addr().String(), func() { srv.Close() }, nil
}

func dirBytes(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func printCache(w io.Writer, c config, res *cacheResult) {
	fmt.Fprintf(w, "### images from a binary cache: %s\n\n", res.name)
	if res.setupErr != "" {
		fmt.Fprintf(w, "Not measured: %s\n\n", res.setupErr)
		return
	}
	fmt.Fprintf(w, "%d store paths, %s of files; the cache (made by `nix copy --to file://…?compression=%s`, signed) holds %s of NARs, served over HTTP on 127.0.0.1 by the bench. Store-only, layout none, raw; median of %d runs, to the image's fsync; peak RSS the plugin's (ours) or nix's.\n\n",
		res.paths, human(res.bytes), cacheCompression, human(res.cacheBytes), c.runs)
	fmt.Fprintln(w, "| step | wall time | peak RSS |")
	fmt.Fprintln(w, "|---|--:|--:|")
	for _, r := range []*row{res.ours, res.copy, res.local} {
		fmt.Fprintf(w, "| %s | %s | %s |\n", r.name, timeCell(r), human(r.rss))
	}
	fmt.Fprintln(w)
}

func cacheTargets(res *cacheResult) []string {
	target := fmt.Sprintf("%s from a cache ≤ %.1f × (`nix copy --from` + a local build)", res.name, cacheLimit)
	if res.setupErr != "" || !res.ours.ok() || !res.copy.ok() || !res.local.ok() {
		return []string{verdictRow(target, "not measured", false)}
	}
	o, peer := res.ours.median(), res.copy.median()+res.local.median()
	ratio := float64(o) / float64(peer)
	return []string{verdictRow(target, fmt.Sprintf("%s / (%s + %s) = %.2f", dur(o), dur(res.copy.median()), dur(res.local.median()), ratio), ratio <= cacheLimit)}
}
