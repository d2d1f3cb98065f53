package binarycache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/wire"
)

// bigNARSize is more than the 64 MiB memory budget, so buffering a NAR would show.
const bigNARSize = 96 << 20

// writeBigNAR writes a NAR of one regular file of about bigNARSize bytes (a random MiB
// repeated: compressors shrink it fast) and returns its size and hash.
func writeBigNAR(t *testing.T, path string) (uint64, *nixhash.Hash) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	bw := bufio.NewWriter(io.MultiWriter(f, h))
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents"} {
		wire.WriteString(bw, s)
	}
	block := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range block {
		block[i] = byte(rng.Uint32())
	}
	wire.WriteUint64(bw, bigNARSize)
	for range bigNARSize / len(block) {
		bw.Write(block)
	}
	wire.WriteString(bw, ")")
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	return uint64(st.Size()), nixhash.MustNewHash(nixhash.SHA256, h.Sum(nil))
}

// Reading a NAR larger than the memory budget, spooled and streamed, xz and zstd (made
// by the real xz and zstd tools), allocates far less than the NAR: memory is bounded by
// the decoders' windows, not the closure. TotalAlloc bounds the peak from above.
func TestMemoryBounded(t *testing.T) {
	for _, tool := range []string{"xz", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	os.MkdirAll(filepath.Join(cache, "nar"), 0o755)
	narPath := filepath.Join(dir, "big.nar")
	size, narHash := writeBigNAR(t, narPath)
	sec, pub, err := signature.GenerateKeypair("mem-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	const storePath = StoreDir + "/00000000000000000000000000000000-big"
	for _, comp := range []struct{ name, ext string }{{"xz", "xz"}, {"zstd", "zst"}} {
		t.Run(comp.name, func(t *testing.T) {
			rel := "nar/big.nar." + comp.ext
			out, err := os.Create(filepath.Join(cache, rel))
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(comp.name, "-c", "-T1", narPath)
			cmd.Stdout = out
			cmd.Stderr = os.Stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s: %v", comp.name, err)
			}
			out.Close()
			ni := &narinfo.NarInfo{StorePath: storePath, URL: rel, Compression: comp.name,
				NarHash: nixhash.MustNewHashWithEncoding(nixhash.SHA256, narHash.Digest(), nixhash.NixBase32, true),
				NarSize: size}
			sig, err := sec.Sign(nil, ni.Fingerprint())
			if err != nil {
				t.Fatal(err)
			}
			ni.Signatures = append(ni.Signatures, sig)
			os.WriteFile(filepath.Join(cache, "00000000000000000000000000000000.narinfo"), []byte(ni.String()), 0o644)

			c := newClient(t, Config{Substituters: []string{"file://" + cache}, TrustedPublicKeys: []string{pub.String()}})
			p, err := c.PathInfo(context.Background(), storePath)
			if err != nil {
				t.Fatal(err)
			}
			var s *Spooled
			read := func(open func() (io.ReadCloser, error)) func() (int64, error) {
				return func() (int64, error) {
					r, err := open()
					if err != nil {
						return 0, err
					}
					defer r.Close()
					return io.Copy(io.Discard, r)
				}
			}
			for _, step := range []struct {
				name string
				run  func() (int64, error)
			}{
				{"spooling (decompressing and verifying)", func() (int64, error) {
					var err error
					if s, err = c.Spool(context.Background(), p, t.TempDir()); err != nil {
						return 0, err
					}
					return s.Size(), nil
				}},
				{"reading the spool", read(func() (io.ReadCloser, error) { return s.Open() })},
				{"streaming", read(func() (io.ReadCloser, error) { return c.OpenNAR(context.Background(), p) })},
			} {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				n, err := step.run()
				runtime.ReadMemStats(&after)
				if err != nil || uint64(n) != size {
					t.Fatalf("%s: %d of %d bytes: %v", step.name, n, size, err)
				}
				if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 40<<20 {
					t.Errorf("%s a %d MiB NAR allocated %d MiB", step.name, size>>20, alloc>>20)
				} else {
					t.Logf("%s, %s: %s MiB allocated for a %d MiB NAR", comp.name, step.name, strconv.FormatUint(alloc>>20, 10), size>>20)
				}
			}
		})
	}
}
