package nixos

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/binarycache"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
)

// The cache internal/nix/binarycache's tests keep: the small fixture closure
// (6 paths, xz) as the real `nix copy --to file://…` wrote it, and its key.
const (
	testCacheRoot = "/nix/store/ph3wwanxydp5pg3ja6ids1q381g8kbcd-fixture-small-a"
	testCacheNAR  = "nar/15xbdn7rnahpl4piddzq6klnin5sh53vqxqw6w3px8hplk91w17w.nar.xz" // the root's
)

func testCache(t *testing.T) (dir, pub string) {
	t.Helper()
	dir, err := filepath.Abs("../../internal/nix/binarycache/testdata/cache")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../internal/nix/binarycache/testdata/key.pub")
	if err != nil {
		t.Fatal(err)
	}
	return dir, strings.TrimSpace(string(b))
}

// copyTestCache copies a cache directory (flat files and nar/) for tampering.
func copyTestCache(t *testing.T, src string) string { return cachetest.Copy(t, src) }

// serveCache serves dir on 127.0.0.1; nar (if not nil) answers the requests
// for NARs instead.
func serveCache(t *testing.T, dir string, nar func(w http.ResponseWriter, r *http.Request, files http.Handler)) string {
	t.Helper()
	files := http.FileServer(http.Dir(dir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if nar != nil && strings.HasPrefix(r.URL.Path, "/nar/") {
			nar(w, r, files)
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// cacheState is the state bag after stepClosure over the cache at sub, with
// the "store" Builder.Run makes, and TMPDIR a new empty directory (returned).
func cacheState(t *testing.T, sub, pub, root string) (*multistep.BasicStateBag, *testUI, string) {
	t.Helper()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	c := prepared(t, map[string]interface{}{"store_paths": []string{root},
		"substituters": []string{sub}, "trusted_public_keys": []string{pub}})
	state, ui := newState(c)
	store, err := closureStore(c, ui)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := store.(*CacheStore); !ok {
		t.Fatalf("the store is a %T with substituters set", store)
	}
	state.Put("store", store)
	requireContinue(t, (&stepClosure{}).Run(context.Background(), state), state)
	return state, ui, tmp
}

func requireEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("%s is not empty: %v", dir, ents)
	}
}

// Every NAR of the closure is spooled, in closure order, each reading back to
// its verified end; the spool directory under TMPDIR is said up front and
// gone after Cleanup. Over HTTP a NAR answered 503 once is retried, and the
// retry is told to the user.
func TestStepFetchSpoolsTheClosure(t *testing.T) {
	dir, pub := testCache(t)
	var busy atomic.Bool
	type cache struct{ sub, pub, root string }
	caches := map[string]cache{
		"file": {"file://" + dir, pub, testCacheRoot},
		"http": {serveCache(t, dir, func(w http.ResponseWriter, r *http.Request, files http.Handler) {
			if r.URL.Path == "/"+testCacheNAR && busy.CompareAndSwap(false, true) {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return
			}
			files.ServeHTTP(w, r)
		}), pub, testCacheRoot},
	}
	if nixDir, nixPub := nixCopyCache(t, "zstd"); nixDir != "" {
		caches["nix-copy-zstd"] = cache{"file://" + nixDir, nixPub, nixCopyRoot()}
	}
	for name, cc := range caches {
		t.Run(name, func(t *testing.T) {
			state, ui, tmp := cacheState(t, cc.sub, cc.pub, cc.root)
			closure := state.Get("closure").([]nixstore.PathInfo)
			infos := state.Get("cache_closure").([]*binarycache.PathInfo)
			if len(infos) != len(closure) || len(infos) < 6 {
				t.Fatalf("%d narinfos for a closure of %d paths", len(infos), len(closure))
			}
			for i := range infos {
				if infos[i].Path != closure[i].Path || infos[i].NixstoreInfo().NarHash != closure[i].NarHash {
					t.Fatalf("cache_closure[%d] is %s, closure[%d] %s", i, infos[i].Path, i, closure[i].Path)
				}
			}
			if !slices.IsSortedFunc(closure, func(a, b nixstore.PathInfo) int { return strings.Compare(a.Path, b.Path) }) {
				t.Error("the closure is not sorted by path, as nixstore's is")
			}

			step := &stepFetch{}
			requireContinue(t, step.Run(context.Background(), state), state)
			nars := state.Get("nars").([]*binarycache.Spooled)
			spools, _ := filepath.Glob(filepath.Join(tmp, "packer-nixos-nars-*"))
			if len(spools) != 1 || step.dir != spools[0] {
				t.Fatalf("spool directories %v, step's %s", spools, step.dir)
			}
			files, _ := os.ReadDir(step.dir)
			if len(nars) != len(infos) || len(files) != len(infos) {
				t.Fatalf("%d NARs, %d files spooled for %d paths", len(nars), len(files), len(infos))
			}
			for i, n := range nars {
				if n.Info != infos[i] {
					t.Errorf("nars[%d] is %s; want %s", i, n.Info.Path, infos[i].Path)
				}
				r, err := n.Open()
				if err != nil {
					t.Fatal(err)
				}
				if got, err := io.Copy(io.Discard, r); err != nil || uint64(got) != n.Info.NarSize {
					t.Errorf("%s read back: %d bytes, %v", n.Info.Path, got, err)
				}
				r.Close()
			}
			file, _ := binarycache.TotalSizes(infos)
			for _, want := range []string{"Downloading " + strconv.Itoa(len(infos)) + " NARs: " + humanBytes(int64(file)) + " compressed",
				step.dir, "Downloaded " + strconv.Itoa(len(infos)) + " NARs"} {
				if !strings.Contains(ui.out.String(), want) {
					t.Errorf("the user was not told %q:\n%s", want, ui.out)
				}
			}
			if name == "http" && !strings.Contains(ui.out.String(), "503 Service Unavailable; retrying") {
				t.Errorf("the retry was not told:\n%s", ui.out)
			}
			step.Cleanup(state)
			requireEmptyDir(t, tmp)
		})
	}
}

// A 404 for a NAR whose narinfo the cache has, and a NAR with a flipped byte:
// each stops the step with the path and the URL; nothing is left, before
// Cleanup too.
func TestStepFetchRefusals(t *testing.T) {
	dir, pub := testCache(t)
	tampered := copyTestCache(t, dir)
	b, err := os.ReadFile(filepath.Join(tampered, testCacheNAR))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(filepath.Join(tampered, testCacheNAR), b, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := serveCache(t, dir, func(w http.ResponseWriter, r *http.Request, files http.Handler) {
		if r.URL.Path == "/"+testCacheNAR {
			http.NotFound(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
	for _, tc := range []struct{ name, sub, want string }{
		{"404", missing, "404 Not Found"},
		{"tampered", "file://" + tampered, "FileHash mismatch"},
		{"tampered-http", serveCache(t, tampered, nil), "FileHash mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, ui, tmp := cacheState(t, tc.sub, pub, testCacheRoot)
			step := &stepFetch{}
			requireHalt(t, step.Run(context.Background(), state), state, ui, tc.want)
			msg := state.Get("error").(error).Error()
			for _, want := range []string{"downloading the NARs: ", testCacheRoot, strings.TrimPrefix(tc.sub, "file://") + "/" + testCacheNAR} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not name %q", msg, want)
				}
			}
			if _, ok := state.GetOk("nars"); ok {
				t.Error("NARs were put in the state bag")
			}
			requireEmptyDir(t, tmp)
			step.Cleanup(state)
			requireEmptyDir(t, tmp)
		})
	}
}

// Cancelling (Ctrl-C) while every download is under way stops them all at
// once: no more than fetchParallel are in flight, each server-side request
// sees its client go, and nothing is left.
func TestStepFetchCancelStopsAllDownloads(t *testing.T) {
	dir, pub := testCache(t)
	var inFlight, most atomic.Int32
	started := make(chan struct{}, 16)
	sub := serveCache(t, dir, func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if !sendHalf(t, w, filepath.Join(dir, r.URL.Path)) {
			return
		}
		started <- struct{}{}
		<-r.Context().Done() // stalls until the client goes
	})
	state, ui, tmp := cacheState(t, sub, pub, testCacheRoot)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for range fetchParallel {
			<-started
		}
		cancel()
	}()
	step := &stepFetch{}
	begin := time.Now()
	requireHalt(t, step.Run(ctx, state), state, ui, "downloading the NARs: context canceled")
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("the step took %s to stop", d)
	}
	if most.Load() != fetchParallel {
		t.Errorf("%d downloads at once; want %d", most.Load(), fetchParallel)
	}
	for deadline := time.Now().Add(5 * time.Second); inFlight.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := inFlight.Load(); n != 0 {
		t.Errorf("%d downloads still going after the step stopped", n)
	}
	requireEmptyDir(t, tmp)
	step.Cleanup(state)
	requireEmptyDir(t, tmp)
}

// The first error cancels the other downloads at once, stalled as they are,
// and is the one reported.
func TestStepFetchFirstErrorStopsTheRest(t *testing.T) {
	dir, pub := testCache(t)
	var inFlight atomic.Int32
	stalled := make(chan struct{}, 16)
	sub := serveCache(t, dir, func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		if r.URL.Path == "/"+testCacheNAR {
			for range fetchParallel - 1 { // the others are under way
				<-stalled
			}
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", "1000000")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("x"))
		w.(http.Flusher).Flush()
		stalled <- struct{}{}
		<-r.Context().Done()
	})
	state, ui, tmp := cacheState(t, sub, pub, testCacheRoot)
	// The root's download starts last of the first fetchParallel.
	infos := state.Get("cache_closure").([]*binarycache.PathInfo)
	i := slices.IndexFunc(infos, func(p *binarycache.PathInfo) bool { return p.Path == testCacheRoot })
	root := infos[i]
	infos = slices.Insert(slices.Delete(slices.Clone(infos), i, i+1), fetchParallel-1, root)
	state.Put("cache_closure", infos)
	step := &stepFetch{}
	begin := time.Now()
	requireHalt(t, step.Run(context.Background(), state), state, ui, testCacheRoot+": GET "+sub+"/"+testCacheNAR+": HTTP 404 Not Found")
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("the step took %s to stop", d)
	}
	if n := inFlight.Load(); n > 0 {
		time.Sleep(100 * time.Millisecond)
		if n := inFlight.Load(); n > 0 {
			t.Errorf("%d downloads still going", n)
		}
	}
	requireEmptyDir(t, tmp)
	step.Cleanup(state)
}

// Too little room under TMPDIR for the spool: refused before any download,
// saying what is needed, what is free, and what to do.
func TestStepFetchRefusesWithoutTheSpace(t *testing.T) {
	dir, pub := testCache(t)
	var nars atomic.Int32
	sub := serveCache(t, dir, func(w http.ResponseWriter, r *http.Request, files http.Handler) {
		nars.Add(1)
		files.ServeHTTP(w, r)
	})
	state, ui, tmp := cacheState(t, sub, pub, testCacheRoot)
	step := &stepFetch{freeSpace: func(string) (uint64, error) { return 1000, nil }}
	requireHalt(t, step.Run(context.Background(), state), state, ui, "not enough space for the NARs in "+tmp)
	if msg := state.Get("error").(error).Error(); !strings.Contains(msg, "1000 B free; set TMPDIR") {
		t.Errorf("error %q", msg)
	}
	if nars.Load() != 0 {
		t.Errorf("%d NARs requested", nars.Load())
	}
	step.Cleanup(state)
	requireEmptyDir(t, tmp)
	// The real statfs answers for the test's directory.
	if free, err := statfsFree(tmp); err != nil || free == 0 {
		t.Errorf("statfs: %d, %v", free, err)
	}
}

// The bar counts a retried download's bytes once, and never goes back.
func TestNetProgress(t *testing.T) {
	var added []int64
	p := &netProgress{add: func(n int64) { added = append(added, n) }}
	for _, n := range []int64{100, -60, 50, 30, 0} {
		p.Add(n)
	}
	if !slices.Equal(added, []int64{100, 20}) {
		t.Errorf("bar advanced by %v; want [100 20]", added)
	}
}

// Without substituters stepFetch does nothing: the closure is in the
// host's store, and no "store" that fetches is needed.
func TestStepFetchWithoutSubstituters(t *testing.T) {
	state, _ := newState(prepared(t, nil))
	step := &stepFetch{}
	requireContinue(t, step.Run(context.Background(), state), state)
	if _, ok := state.GetOk("nars"); ok || step.dir != "" {
		t.Errorf("spooled without substituters: nars in state, dir %q", step.dir)
	}
	step.Cleanup(state)
}

func mergeRaw(a, b map[string]interface{}) map[string]interface{} {
	m := map[string]interface{}{}
	for k, v := range a {
		m[k] = v
	}
	for k, v := range b {
		m[k] = v
	}
	return m
}

// nixCopyCache makes a cache with the real `nix copy --to file://…` of the
// small fixture closure, signed by a new key; "" if Nix or the fixture is not
// here.
func nixCopyCache(t *testing.T, compression string) (dir, pub string) {
	t.Helper()
	root := nixCopyRoot()
	if root == "" {
		return "", ""
	}
	if _, err := exec.LookPath("nix"); err != nil {
		return "", ""
	}
	base := t.TempDir()
	sec, pubFile, dir := filepath.Join(base, "sec"), filepath.Join(base, "pub"), filepath.Join(base, "cache")
	for _, args := range [][]string{
		{"nix-store", "--generate-binary-cache-key", "fetch-test-1", sec, pubFile},
		{"nix", "--extra-experimental-features", "nix-command", "copy", "--to", "file://" + dir + "?compression=" + compression + "&secret-key=" + sec, root},
	} {
		var stderr bytes.Buffer
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, stderr.String())
		}
	}
	b, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	return dir, strings.TrimSpace(string(b))
}

func nixCopyRoot() string {
	root, err := filepath.EvalSymlinks("/nix/var/nix/gcroots/packer-plugin-nixos/small")
	if err != nil {
		return ""
	}
	return root
}

// CacheStore.Check checks the syntax only: the caches are asked in Closure.
func TestCacheStoreCheck(t *testing.T) {
	s := &CacheStore{}
	if err := s.Check(testCacheRoot); err != nil {
		t.Error(err)
	}
	for _, p := range []string{"/nix/store/x-a", testCacheRoot + "/bin", "/gnu/store/ph3wwanxydp5pg3ja6ids1q381g8kbcd-a", "/nix/store/ph3wwanxydp5pg3ja6ids1q381g8kbcd-a b"} {
		if err := s.Check(p); err == nil || !strings.Contains(err.Error(), strconv.Quote(p)+" is not a store path") {
			t.Errorf("Check(%q) = %v", p, err)
		}
	}
}

// sendHalf answers with the whole file's headers and its first half,
// flushed: what a server that then stalls or hangs up has sent.
func sendHalf(t *testing.T, w http.ResponseWriter, file string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Error(err)
		return false
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b[:len(b)/2])
	w.(http.Flusher).Flush()
	return true
}
