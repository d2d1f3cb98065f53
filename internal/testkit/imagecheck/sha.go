package imagecheck

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"testing"
)

// SHA256File is the hex sha256 of a file's bytes, for byte-identity checks.
func SHA256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
