package binarycache

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
)

// netrc credentials go only to the host they name (a "default" entry is ignored): a first
// substituter on another host ("localhost" vs "127.0.0.1") and a redirect to it never
// see them.
func TestNetrcOnlyForItsHost(t *testing.T) {
	rc := makeCache(t, "xz")
	var mu sync.Mutex
	var leaked []string
	other := cachetest.Serve(t, rc.dir, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if h := r.Header.Get("Authorization"); h != "" {
				mu.Lock()
				leaked = append(leaked, r.URL.Path+": "+h)
				mu.Unlock()
			}
			if strings.HasSuffix(r.URL.Path, ".narinfo") {
				http.NotFound(w, r) // so the private cache is asked next
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	other = strings.Replace(other, "127.0.0.1", "localhost", 1)
	var authed int
	private := cachetest.Serve(t, rc.dir, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != "alice" || p != "s3cret" {
				http.Error(w, "who are you", http.StatusUnauthorized)
				return
			}
			mu.Lock()
			authed++
			mu.Unlock()
			if strings.HasPrefix(r.URL.Path, "/nar/") { // NARs live elsewhere
				http.Redirect(w, r, other+r.URL.Path, http.StatusFound)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	netrc := filepath.Join(t.TempDir(), "netrc")
	if err := os.WriteFile(netrc, []byte("machine 127.0.0.1\nlogin alice\npassword s3cret\ndefault login bob password nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(other, rc.pub)
	cfg.Substituters = append(cfg.Substituters, private)
	cfg.NetrcFile = netrc
	var logs []string
	cfg.Logf = func(f string, a ...any) { logs = append(logs, f) }
	c := newClient(t, cfg)
	infos, err := c.Closure(context.Background(), []string{rc.root})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range infos {
		s, err := c.Spool(context.Background(), p, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		s.Remove()
	}
	if authed < len(rc.paths)*2 {
		t.Errorf("private cache saw %d authenticated requests, want ≥ %d", authed, len(rc.paths)*2)
	}
	if len(leaked) != 0 {
		t.Errorf("credentials sent to another host: %v", leaked)
	}
	// Without the netrc the private cache refuses: 401 is not retried and not "not found".
	cfg.NetrcFile = ""
	cfg.Substituters = []string{private}
	_, err = newClient(t, cfg).PathInfo(context.Background(), rc.root)
	wantErr(t, err, "401", "no substituter answered")
	for _, l := range logs {
		if strings.Contains(l, "s3cret") {
			t.Errorf("password logged: %s", l)
		}
	}
}
