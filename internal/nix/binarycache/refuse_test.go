package binarycache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
	uxz "github.com/ulikunitz/xz"
	"github.com/xi2/xz"
)

// rootInfo fetches the fixture root's PathInfo from a tampered copy of the xz cache.
func tamperedSetup(t *testing.T) (*realCache, string) {
	rc := makeCache(t, "xz")
	return rc, copyCache(t, rc.dir)
}

// A flipped byte in a .nar.xz: FileHash refuses it at spool time, naming the path and
// both hashes; the spool directory stays empty.
func TestRefuseTamperedNARFile(t *testing.T) {
	rc, dir := tamperedSetup(t)
	c := newClient(t, testConfig("file://"+dir, rc.pub))
	p, err := c.PathInfo(context.Background(), rc.root)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, p.URL)
	b, _ := os.ReadFile(f)
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	_, err = c.Spool(context.Background(), p, spool)
	if !isMismatch(err, "FileHash") {
		t.Fatalf("got %v, want a FileHash mismatch", err)
	}
	wantErr(t, err, rc.root, p.FileHash.Format(nixhash.NixBase32, true))
	assertEmpty(t, spool)
	// Streaming sees it too, at the end.
	r, err := c.OpenNAR(context.Background(), p)
	if err == nil {
		_, err = io.ReadAll(r)
		r.Close()
	}
	if err == nil {
		t.Fatal("streamed tampered NAR accepted")
	}
}

// A different NAR with FileHash/FileSize recomputed (they are not signed): the spool
// refuses it on the signed NarHash, and nothing is left.
func TestRefuseSubstitutedNARContent(t *testing.T) {
	rc, dir := tamperedSetup(t)
	c := newClient(t, testConfig("file://"+dir, rc.pub))
	p, err := c.PathInfo(context.Background(), rc.root)
	if err != nil {
		t.Fatal(err)
	}
	nar := []byte(cachetest.Output(t, "nix-store", "--dump", rc.root))
	nar[len(nar)-40] ^= 1 // inside the last file's contents or its name: same size
	var xzb bytes.Buffer
	w, _ := uxz.NewWriter(&xzb)
	w.Write(nar)
	w.Close()
	if err := os.WriteFile(filepath.Join(dir, "nar/evil.nar.xz"), xzb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256sum(xzb.Bytes())
	editNarInfo(t, dir, rc.root, func(l string) string {
		switch {
		case strings.HasPrefix(l, "URL: "):
			return "URL: nar/evil.nar.xz"
		case strings.HasPrefix(l, "FileHash: "):
			return "FileHash: " + sum
		case strings.HasPrefix(l, "FileSize: "):
			return "FileSize: " + itoa(xzb.Len())
		}
		return l
	})
	p, err = c.PathInfo(context.Background(), rc.root)
	if err != nil {
		t.Fatalf("narinfo with recomputed FileHash should still verify: %v", err)
	}
	spool := t.TempDir()
	_, err = c.Spool(context.Background(), p, spool)
	if !isMismatch(err, "NarHash") {
		t.Fatalf("got %v, want a NarHash mismatch", err)
	}
	wantErr(t, err, rc.root, p.NarHash.Format(nixhash.NixBase32, true))
	assertEmpty(t, spool)
	// Streaming sees it too, at the end.
	r, err := c.OpenNAR(context.Background(), p)
	if err == nil {
		_, err = io.ReadAll(r)
		r.Close()
	}
	if !isMismatch(err, "NarHash") {
		t.Fatalf("streaming: got %v, want a NarHash mismatch", err)
	}
}

// A changed NarHash in the narinfo breaks the signature.
func TestRefuseTamperedNarInfo(t *testing.T) {
	rc, dir := tamperedSetup(t)
	other := rc.paths[0]
	if other == rc.root {
		other = rc.paths[1]
	}
	otherHash := ""
	editNarInfo(t, dir, other, func(l string) string {
		if strings.HasPrefix(l, "NarHash: ") {
			otherHash = l
		}
		return l
	})
	editNarInfo(t, dir, rc.root, func(l string) string {
		if strings.HasPrefix(l, "NarHash: ") {
			return otherHash
		}
		return l
	})
	c := newClient(t, testConfig("file://"+dir, rc.pub))
	_, err := c.Closure(context.Background(), []string{rc.root})
	wantErr(t, err, rc.root, "no valid signature", "the signature by test-1 does not match this narinfo")
}

// A narinfo without Sig is refused while signatures are required, accepted otherwise.
func TestRefuseUnsigned(t *testing.T) {
	rc, dir := tamperedSetup(t)
	editNarInfo(t, dir, rc.root, func(l string) string {
		if strings.HasPrefix(l, "Sig: ") {
			return ""
		}
		return l
	})
	cfg := testConfig("file://"+dir, rc.pub)
	_, err := newClient(t, cfg).Closure(context.Background(), []string{rc.root})
	wantErr(t, err, rc.root, "is not signed", "test-1")
	cfg.AcceptUnsigned = true
	infos, err := newClient(t, cfg).Closure(context.Background(), []string{rc.root})
	if err != nil || len(infos) != len(rc.paths) {
		t.Fatalf("require_sigs = false: %v", err)
	}
}

// Signatures by a key that is not trusted (same name, other key; other name) are refused.
func TestRefuseUnknownKey(t *testing.T) {
	rc := makeCache(t, "xz")
	for _, name := range []string{"test-1", "other-1"} {
		_, pub, err := signature.GenerateKeypair(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		c := newClient(t, testConfig("file://"+rc.dir, pub.String()))
		_, err = c.PathInfo(context.Background(), rc.root)
		wantErr(t, err, rc.root, "no valid signature", "trusted keys tried: "+name)
	}
}

// A referenced path missing from the cache (404 over HTTP) fails the closure, naming it.
func TestRefuseMissingReference(t *testing.T) {
	rc, dir := tamperedSetup(t)
	missing := ""
	for _, p := range rc.paths {
		if p != rc.root {
			missing = p
			break
		}
	}
	os.Remove(narinfoPath(dir, missing))
	c := newClient(t, testConfig(cachetest.Serve(t, dir, nil), rc.pub))
	_, err := c.Closure(context.Background(), []string{rc.root})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	wantErr(t, err, missing, "404", "in no substituter")
}

// narHandler wraps the cache so that requests for .nar files go to nar.
func narHandler(nar func(w http.ResponseWriter, r *http.Request, next http.Handler)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/nar/") {
				nar(w, r, next)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// halfBody sends the headers and half of the file, flushed, then returns the file size.
func halfBody(t *testing.T, dir string, w http.ResponseWriter, r *http.Request) {
	b, err := os.ReadFile(filepath.Join(dir, r.URL.Path))
	if err != nil {
		t.Error(err)
		return
	}
	w.Header().Set("Content-Length", itoa(len(b)))
	w.WriteHeader(200)
	w.Write(b[:len(b)/2])
	w.(http.Flusher).Flush()
}

// A server that stops sending mid-body: the stall timeout ends each attempt, retries are
// spent, the error names the URL; nothing is left.
func TestRefuseStall(t *testing.T) {
	rc, dir := tamperedSetup(t)
	var tries atomic.Int32
	sub := cachetest.Serve(t, dir, narHandler(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		tries.Add(1)
		halfBody(t, dir, w, r)
		<-r.Context().Done()
	}))
	c := newClient(t, testConfig(sub, rc.pub))
	p, err := c.PathInfo(context.Background(), rc.root)
	if err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	_, err = c.Spool(context.Background(), p, spool)
	wantErr(t, err, "stalled", sub+"/"+p.URL, "after 3 attempts")
	if tries.Load() != 3 {
		t.Errorf("%d attempts, want 3", tries.Load())
	}
	assertEmpty(t, spool)
}

// A server that closes the connection mid-NAR: a truncated body, retried, then refused.
func TestRefuseClosedMidNAR(t *testing.T) {
	rc, dir := tamperedSetup(t)
	sub := cachetest.Serve(t, dir, narHandler(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		halfBody(t, dir, w, r)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	c := newClient(t, testConfig(sub, rc.pub))
	p, err := c.PathInfo(context.Background(), rc.root)
	if err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	_, err = c.Spool(context.Background(), p, spool)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("got %v, want unexpected EOF", err)
	}
	wantErr(t, err, sub+"/"+p.URL, "after 3 attempts")
	assertEmpty(t, spool)
}

// A redirect loop is refused at once (not retried) with a clear error.
func TestRefuseRedirectLoop(t *testing.T) {
	rc := makeCache(t, "xz")
	var hits atomic.Int32
	sub := cachetest.Serve(t, rc.dir, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			switch {
			case strings.HasPrefix(r.URL.Path, "/loop/"):
				http.Redirect(w, r, strings.TrimPrefix(r.URL.Path, "/loop"), http.StatusFound)
				return
			case strings.HasSuffix(r.URL.Path, ".narinfo"):
				http.Redirect(w, r, "/loop"+r.URL.Path, http.StatusFound)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	_, err := newClient(t, testConfig(sub, rc.pub)).PathInfo(context.Background(), rc.root)
	wantErr(t, err, "redirect loop", sub)
	if hits.Load() != 2 {
		t.Errorf("%d requests, want 2: the loop is seen before its third request, and not retried", hits.Load())
	}
}

// 503 twice, then the file: the retries make it through.
func TestRetry5xx(t *testing.T) {
	rc := makeCache(t, "xz")
	var n atomic.Int32
	sub := cachetest.Serve(t, rc.dir, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) <= 2 {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	var logged []string
	cfg := testConfig(sub, rc.pub)
	cfg.Logf = func(f string, a ...any) { logged = append(logged, f) }
	if _, err := newClient(t, cfg).PathInfo(context.Background(), rc.root); err != nil {
		t.Fatal(err)
	}
	if len(logged) != 2 {
		t.Errorf("%d retry notices, want 2", len(logged))
	}
	// With no retries the same server fails, naming the status and URL.
	n.Store(0)
	cfg.Retries = -1
	_, err := newClient(t, cfg).PathInfo(context.Background(), rc.root)
	wantErr(t, err, "503", sub+"/")
}

// Cancelling the context mid-download stops it at once and leaves nothing.
func TestCancelMidDownload(t *testing.T) {
	rc, dir := tamperedSetup(t)
	started := make(chan struct{}, 1)
	sub := cachetest.Serve(t, dir, narHandler(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		halfBody(t, dir, w, r)
		started <- struct{}{}
		<-r.Context().Done()
	}))
	cfg := testConfig(sub, rc.pub)
	cfg.StallTimeout = time.Hour
	c := newClient(t, cfg)
	p, err := c.PathInfo(context.Background(), rc.root)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	spool := t.TempDir()
	_, err = c.Spool(ctx, p, spool)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	assertEmpty(t, spool)
}

// 403 (S3's answer for a missing key) and 404 are "not here": the next substituter is
// asked, and neither is retried.
func TestNotFoundTriesNextWithoutRetry(t *testing.T) {
	rc := makeCache(t, "xz")
	for _, code := range []int{http.StatusForbidden, http.StatusNotFound} {
		var hits atomic.Int32
		first := cachetest.Serve(t, rc.dir, func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				http.Error(w, "no", code)
			})
		})
		cfg := testConfig(first, rc.pub)
		cfg.Substituters = append(cfg.Substituters, "file://"+rc.dir)
		infos, err := newClient(t, cfg).Closure(context.Background(), []string{rc.root})
		if err != nil {
			t.Fatalf("%d: %v", code, err)
		}
		if int(hits.Load()) != len(rc.paths) || len(infos) != len(rc.paths) {
			t.Errorf("%d: %d requests to the first cache, want one per path (%d)", code, hits.Load(), len(rc.paths))
		}
		if infos[0].Substituter() != "file://"+rc.dir {
			t.Errorf("%d: came from %s", code, infos[0].Substituter())
		}
	}
}

// An xz stream declaring a 64 MiB dictionary (more than XZDictCap) is refused when read,
// naming the path, instead of allocating past the memory budget.
func TestRefuseXZDictTooLarge(t *testing.T) {
	rc, dir := tamperedSetup(t)
	nar := filepath.Join(t.TempDir(), "root.nar")
	if err := os.WriteFile(nar, []byte(cachetest.Output(t, "nix-store", "--dump", rc.root)), 0o644); err != nil {
		t.Fatal(err)
	}
	big := []byte(cachetest.Output(t, "xz", "-c", "--lzma2=preset=6,dict=64MiB", nar))
	if err := os.WriteFile(filepath.Join(dir, "nar/big-dict.nar.xz"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	editNarInfo(t, dir, rc.root, func(l string) string {
		switch {
		case strings.HasPrefix(l, "URL: "):
			return "URL: nar/big-dict.nar.xz"
		case strings.HasPrefix(l, "FileHash: "):
			return "FileHash: " + sha256sum(big)
		case strings.HasPrefix(l, "FileSize: "):
			return "FileSize: " + itoa(len(big))
		}
		return l
	})
	c := newClient(t, testConfig("file://"+dir, rc.pub))
	p, err := c.PathInfo(context.Background(), rc.root)
	if err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	_, err = c.Spool(context.Background(), p, spool)
	if !errors.Is(err, xz.ErrMemlimit) {
		t.Fatalf("got %v, want xz.ErrMemlimit", err)
	}
	wantErr(t, err, rc.root)
	assertEmpty(t, spool)
}
