package binarycache

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/cachetest"
)

// SpoolProgress reports every compressed byte read from the cache, and takes back what
// a failed attempt read: after a connection cut mid-NAR and a retry, the sum of what it
// reported is the NAR file's size (FileSize), and the spool holds the NAR (NarSize).
func TestSpoolProgressAcrossRetry(t *testing.T) {
	dir, pub := committedCache(t)
	var tries atomic.Int32
	sub := cachetest.Serve(t, dir, narHandler(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if tries.Add(1) > 1 {
			next.ServeHTTP(w, r)
			return
		}
		halfBody(t, dir, w, r)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	}))
	c := newClient(t, testConfig(sub, pub))
	p, err := c.PathInfo(context.Background(), "/nix/store/ph3wwanxydp5pg3ja6ids1q381g8kbcd-fixture-small-a")
	if err != nil {
		t.Fatal(err)
	}
	var sum, negative int64
	s, err := c.SpoolProgress(context.Background(), p, t.TempDir(), func(n int64) {
		sum += n
		if n < 0 {
			negative++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if tries.Load() != 2 || negative != 1 {
		t.Errorf("%d attempts, %d take-backs; want 2 and 1", tries.Load(), negative)
	}
	if sum != s.Downloaded() || sum != int64(p.FileSize) || s.Size() != int64(p.NarSize) {
		t.Errorf("progress summed to %d; %d bytes downloaded, FileSize %d; the spooled NAR is %d bytes, NarSize %d",
			sum, s.Downloaded(), p.FileSize, s.Size(), p.NarSize)
	}
}
