package nixos

import (
	"context"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/packertest"
)

// Every refusal through packer: the build fails with a message naming the
// store path (or URL) and what was wrong, leaves no output directory and
// nothing under TMPDIR. The cache is a fresh copy of a real xz cache of the
// small fixture for each case, tampered with or served by a misbehaving
// server. The stalled server's case sets stalled_download_timeout = 1 and
// download_attempts = 2 (defaults: 60 s a try, 5 tries).
func TestAccCacheRefusals(t *testing.T) {
	accRequire(t)
	small := fixtures.Build(t, "small")
	root := small[0]
	key := accNewKey(t, "acc-cache-1")
	other := accNewKey(t, "acc-other-1")
	clean := accNixCopy(t, key, "xz", small...)
	// A path the root references (not itself).
	var ref string
	for _, r := range strings.Fields(accNarInfoField(t, clean, root, "References")) {
		if r != path.Base(root) {
			ref = "/nix/store/" + r
			break
		}
	}
	if ref == "" {
		t.Fatalf("%s references nothing else", root)
	}
	rootNAR := accNarInfoField(t, clean, root, "URL")
	rootHash := path.Base(root)[:32]

	// onRootNAR serves the cache, with h answering the requests for the root's NAR.
	onRootNAR := func(dir string, h http.HandlerFunc) string {
		return cachetest.Serve(t, dir, func(files http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/"+rootNAR {
					h(w, r)
					return
				}
				files.ServeHTTP(w, r)
			})
		})
	}

	cases := []struct {
		name string
		// setup tampers with dir, a copy of the cache, and returns the substituter
		// and the trusted keys to build with, and what the error must say.
		setup func(t *testing.T, dir string) (sub string, pubs, want []string)
	}{
		{"tampered_nar", func(t *testing.T, dir string) (string, []string, []string) {
			f := filepath.Join(dir, rootNAR)
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x40
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
			return "file://" + dir, []string{key.pub}, []string{root, "FileHash mismatch for file://" + f,
				"narinfo says " + accNarInfoField(t, dir, root, "FileHash") + ", got sha256:"}
		}},
		{"tampered_narinfo_narhash", func(t *testing.T, dir string) (string, []string, []string) {
			otherHash := accNarInfoField(t, dir, ref, "NarHash")
			accEditNarInfo(t, dir, root, func(l string) string {
				if strings.HasPrefix(l, "NarHash: ") {
					return "NarHash: " + otherHash
				}
				return l
			})
			return "file://" + dir, []string{key.pub}, []string{root, "has no valid signature from a trusted key",
				"the signature by acc-cache-1 does not match this narinfo", "trusted keys tried: acc-cache-1", "file://" + dir + "/" + rootHash + ".narinfo"}
		}},
		{"tampered_narinfo_references", func(t *testing.T, dir string) (string, []string, []string) {
			accEditNarInfo(t, dir, root, func(l string) string {
				if refs, ok := strings.CutPrefix(l, "References: "); ok {
					return "References: " + strings.Join(slices.DeleteFunc(strings.Fields(refs), func(r string) bool { return r == path.Base(ref) }), " ")
				}
				return l
			})
			sub := cachetest.Serve(t, dir, nil)
			return sub, []string{key.pub}, []string{root, "has no valid signature from a trusted key",
				"does not match this narinfo", "trusted keys tried: acc-cache-1", sub + "/" + rootHash + ".narinfo"}
		}},
		{"unsigned", func(t *testing.T, dir string) (string, []string, []string) {
			accEditNarInfo(t, dir, root, func(l string) string {
				if strings.HasPrefix(l, "Sig: ") {
					return ""
				}
				return l
			})
			sub := cachetest.Serve(t, dir, nil)
			return sub, []string{key.pub}, []string{root + " is not signed; trusted keys: acc-cache-1", sub + "/" + rootHash + ".narinfo"}
		}},
		{"unknown_key", func(t *testing.T, dir string) (string, []string, []string) {
			sub := cachetest.Serve(t, dir, nil)
			return sub, []string{other.pub}, []string{"has no valid signature from a trusted key: signed by acc-cache-1; trusted keys tried: acc-other-1"}
		}},
		{"narinfo_404", func(t *testing.T, dir string) (string, []string, []string) {
			if err := os.Remove(accNarInfoFile(dir, ref)); err != nil {
				t.Fatal(err)
			}
			sub := cachetest.Serve(t, dir, nil)
			return sub, []string{key.pub}, []string{ref + " is in no substituter", "GET " + sub + "/" + path.Base(ref)[:32] + ".narinfo: HTTP 404 Not Found"}
		}},
		{"nar_404", func(t *testing.T, dir string) (string, []string, []string) {
			if err := os.Remove(filepath.Join(dir, rootNAR)); err != nil {
				t.Fatal(err)
			}
			sub := cachetest.Serve(t, dir, nil)
			return sub, []string{key.pub}, []string{root + ": GET " + sub + "/" + rootNAR + ": HTTP 404 Not Found"}
		}},
		{"closed_mid_nar", func(t *testing.T, dir string) (string, []string, []string) {
			sub := onRootNAR(dir, func(w http.ResponseWriter, r *http.Request) {
				if !sendHalf(t, w, filepath.Join(dir, rootNAR)) {
					return
				}
				if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
					conn.Close()
				}
			})
			url := sub + "/" + rootNAR
			return sub, []string{key.pub}, []string{root + ": GET " + url + ": unexpected EOF (after 5 attempts)",
				"GET " + url + ": unexpected EOF; retrying in"}
		}},
		{"stalled", func(t *testing.T, dir string) (string, []string, []string) {
			sub := onRootNAR(dir, func(w http.ResponseWriter, r *http.Request) {
				if sendHalf(t, w, filepath.Join(dir, rootNAR)) {
					<-r.Context().Done() // then nothing, until the client gives up
				}
			})
			url := sub + "/" + rootNAR
			return sub, []string{key.pub}, []string{root + ": GET " + url + ": stalled: no data for 1s (after 2 attempts)",
				"GET " + url + ": stalled: no data for 1s; retrying in"}
		}},
		{"redirect_loop", func(t *testing.T, dir string) (string, []string, []string) {
			var sub string
			sub = cachetest.Serve(t, dir, func(files http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					switch r.URL.Path {
					case "/" + rootNAR:
						http.Redirect(w, r, "/loop/"+rootNAR, http.StatusFound)
					case "/loop/" + rootNAR:
						http.Redirect(w, r, "/"+rootNAR, http.StatusFound)
					default:
						files.ServeHTTP(w, r)
					}
				})
			})
			return sub, []string{key.pub}, []string{root + ": GET " + sub + "/" + rootNAR + ": redirect loop at " + sub + "/" + rootNAR}
		}},
	}
	// More of a case's source body.
	extra := map[string]string{"stalled": "  stalled_download_timeout = 1\n  download_attempts        = 2"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := accCopyCache(t, clean)
			out := filepath.Join(t.TempDir(), "out")
			sub, pubs, want := tc.setup(t, dir)
			tmp := accSetTmpdir(t)
			begin := time.Now()
			res := runPacker(t, "cache_refuse_"+tc.name, accTemplate([]accSource{{"refuse", accStoreOnly(small, "efi", false, out, sub, pubs...) + "\n" + extra[tc.name]}}))
			took := time.Since(begin).Round(time.Millisecond)
			if res.Exit == 0 {
				t.Fatalf("the build succeeded (%s)", took)
			}
			for _, w := range want {
				if !res.Has(w) {
					t.Errorf("the output does not say %q", w)
				}
			}
			if t.Failed() {
				t.Logf("packer build (%s):\n%s", took, tail(accErrorLines(res.Log), 4000))
			} else {
				t.Logf("refused in %s: %s", took, accBuildError(res.Log))
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output directory left behind: %v", err)
			}
			accRequireEmpty(t, tmp, "TMPDIR after the refusal")
		})
	}
}

// A stalled download, at the step level: the builder has no key for the
// stall timeout (the default is 60 s a try, five tries), so the prepared
// configuration's cache settings are shortened here as binarycache's tests
// shorten theirs. The server sends half of the root's NAR and then nothing:
// each try stalls out, the retries are told, and stepFetch stops with the
// store path, the URL and "stalled", leaving nothing under TMPDIR.
func TestAccCacheStallFetchStep(t *testing.T) {
	accRequireNix(t)
	small := fixtures.Build(t, "small")
	root := small[0]
	key := accNewKey(t, "acc-cache-1")
	dir := accNixCopy(t, key, "xz", small...)
	rootNAR := accNarInfoField(t, dir, root, "URL")
	var tries, inFlight atomic.Int32
	sub := cachetest.Serve(t, dir, func(files http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/"+rootNAR {
				files.ServeHTTP(w, r)
				return
			}
			tries.Add(1)
			inFlight.Add(1)
			defer inFlight.Add(-1)
			if sendHalf(t, w, filepath.Join(dir, rootNAR)) {
				<-r.Context().Done()
			}
		})
	})
	tmp := accSetTmpdir(t)
	c := prepared(t, map[string]interface{}{"store_paths": small,
		"substituters": []string{sub}, "trusted_public_keys": []string{key.pub}})
	c.cache.StallTimeout = 300 * time.Millisecond
	c.cache.Backoff = 10 * time.Millisecond
	c.cache.Retries = 2
	state, ui := newState(c)
	store, err := closureStore(c, ui)
	if err != nil {
		t.Fatal(err)
	}
	state.Put("store", store)
	requireContinue(t, (&stepClosure{}).Run(context.Background(), state), state)
	step := &stepFetch{}
	begin := time.Now()
	action := step.Run(context.Background(), state)
	took := time.Since(begin)
	requireHalt(t, action, state, ui, "downloading the NARs: "+root+": GET "+sub+"/"+rootNAR+": stalled: no data for 300ms (after 3 attempts)")
	if n := tries.Load(); n != 3 {
		t.Errorf("%d tries; want 3", n)
	}
	if !strings.Contains(ui.out.String(), "GET "+sub+"/"+rootNAR+": stalled: no data for 300ms; retrying in 10ms") {
		t.Errorf("the retry was not told:\n%s", ui.out)
	}
	if took > 10*time.Second {
		t.Errorf("the step took %s", took)
	}
	accRequireEmpty(t, tmp, "TMPDIR before Cleanup")
	step.Cleanup(state)
	accRequireEmpty(t, tmp, "TMPDIR after Cleanup")
	for deadline := time.Now().Add(2 * time.Second); inFlight.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := inFlight.Load(); n != 0 {
		t.Errorf("%d stalled requests still open", n)
	}
}

// Ctrl-C while the NARs download from a server that sends one byte every
// 100 ms (no stall, a download of minutes): packer stops within seconds,
// every download's request is gone from the server at once, and neither the
// output directory nor anything under TMPDIR is left.
func TestAccCacheInterrupt(t *testing.T) {
	accRequire(t)
	small := fixtures.Build(t, "small")
	key := accNewKey(t, "acc-cache-1")
	dir := accNixCopy(t, key, "xz", small...)
	var started, active, finished atomic.Int32
	sub := cachetest.Serve(t, dir, func(files http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.URL.Path, "/nar/") {
				files.ServeHTTP(w, r)
				return
			}
			started.Add(1)
			active.Add(1)
			defer active.Add(-1)
			b, err := os.ReadFile(filepath.Join(dir, r.URL.Path))
			if err != nil {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.WriteHeader(http.StatusOK)
			for i := range b {
				if _, err := w.Write(b[i : i+1]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			finished.Add(1)
		})
	})
	out := filepath.Join(t.TempDir(), "out")
	tmpl := accTemplate([]accSource{{"store", accStoreOnly(small, "efi", false, out, sub, key.pub)}})
	tmp := accSetTmpdir(t)
	begin := time.Now()
	log := packertest.Interrupt(t, tmpl, "Downloading 6 NARs", time.Second)
	took := time.Since(begin)
	if took > 15*time.Second {
		t.Errorf("packer took %s to stop after Ctrl-C 1 s into the downloads", took)
	}
	if n := started.Load(); n == 0 {
		t.Error("no NAR download had started")
	}
	if n := finished.Load(); n != 0 {
		t.Errorf("%d NARs downloaded in full: the interrupt came too late to test", n)
	}
	for deadline := time.Now().Add(2 * time.Second); active.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := active.Load(); n != 0 {
		t.Errorf("%d downloads still going after packer stopped", n)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output directory left behind after Ctrl-C: %v", err)
	}
	accRequireEmpty(t, tmp, "TMPDIR after Ctrl-C")
	t.Logf("stopped %s after the start (Ctrl-C at 1 s after %q); %d downloads had started:\n%s",
		took.Round(time.Millisecond), "Downloading 6 NARs", started.Load(), tail(log, 1500))
}

// Ctrl-C after the downloads, while the Debian tree (0.7 GB, from a zstd
// cache over HTTP) is being written from the spooled NARs: packer stops, and
// neither the spool directory nor the partial image nor the output
// directory is left.
func TestAccCacheInterruptWhileWriting(t *testing.T) {
	accRequire(t)
	debian := fixtures.Build(t, "debian")
	key := accNewKey(t, "acc-cache-1")
	sub := cachetest.Serve(t, accNixCopy(t, key, "zstd", debian...), nil)
	out := filepath.Join(t.TempDir(), "out")
	tmpl := accTemplate([]accSource{{"store", accStoreOnly(debian, "efi", false, out, sub, key.pub)}})
	tmp := accSetTmpdir(t)
	begin := time.Now()
	log := packertest.Interrupt(t, tmpl, "Writing the ext4 filesystem", 300*time.Millisecond)
	took := time.Since(begin)
	if !strings.Contains(log, "Downloaded 1 NARs") {
		t.Errorf("the NAR was not downloaded before the interrupt")
	}
	if strings.Contains(log, "Wrote 1 store paths") {
		t.Errorf("the image was written in full before the interrupt: too late to test")
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output directory left behind after Ctrl-C: %v", err)
	}
	accRequireEmpty(t, tmp, "TMPDIR after Ctrl-C")
	t.Logf("stopped %s after the start:\n%s", took.Round(time.Millisecond), tail(log, 1500))
}
