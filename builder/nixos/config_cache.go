package nixos

import (
	"strings"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/binarycache"
)

// prepareCache validates the binary cache keys (substituters, trusted_public_keys,
// require_sigs, netrc_file, stalled_download_timeout, download_attempts) with
// binarycache.New's own checks, one value at a time so
// that each problem is reported with its key, and keeps what New will get in c.cache.
// It makes no request: the caches are first asked in stepClosure.
func (c *Config) prepareCache(bad func(string, ...interface{})) {
	if len(c.Substituters) == 0 {
		for _, k := range []struct {
			key string
			set bool
		}{{"trusted_public_keys", len(c.TrustedPublicKeys) > 0}, {"require_sigs", c.RequireSigs != nil}, {"netrc_file", c.NetrcFile != ""},
			{"stalled_download_timeout", c.StalledDownloadTimeout != 0}, {"download_attempts", c.DownloadAttempts != 0}} {
			if k.set {
				bad("%s: only with substituters, the binary caches to build from; without them the closure is read from the host's Nix store", k.key)
			}
		}
		return
	}
	if !c.OnlyNixStore {
		// Install mode reads the system from its NARs; building one, or
		// adding a channel, needs a Nix store on the host.
		for _, k := range []struct {
			key string
			set bool
		}{{"flake", c.Flake != ""}, {"nix_file", c.NixFile != ""}, {"channel", c.Channel != "" && (c.CopyChannel == nil || *c.CopyChannel)}} {
			if k.set {
				bad("%s: cannot be used with substituters, which read a system already built from binary caches, with no Nix store on this machine; "+
					"build the system elsewhere, push it to the cache and name it with system = \"/nix/store/...\"", k.key)
			}
		}
	}
	sigsDefault := c.RequireSigs == nil
	if sigsDefault {
		t := true
		c.RequireSigs = &t
	}
	// A placeholder substituter lets New check one key or the netrc file alone.
	const placeholder = "file:///nix-cache"
	ok := true
	for _, s := range c.Substituters {
		if _, err := binarycache.New(binarycache.Config{Substituters: []string{s}, AcceptUnsigned: true}); err != nil {
			bad("substituters: %s; allowed: https://host/path, http://host/path or file:///absolute/dir URLs",
				strings.TrimPrefix(err.Error(), "substituter "))
			ok = false
		}
	}
	for _, k := range c.TrustedPublicKeys {
		if _, err := binarycache.New(binarycache.Config{Substituters: []string{placeholder}, TrustedPublicKeys: []string{k}}); err != nil {
			bad("trusted_public_keys: %s; want name:base64 of an ed25519 public key, as nix-store --generate-binary-cache-key writes it",
				strings.TrimPrefix(err.Error(), "trusted public key "))
			ok = false
		}
	}
	if c.NetrcFile != "" {
		if _, err := binarycache.New(binarycache.Config{Substituters: []string{placeholder}, AcceptUnsigned: true, NetrcFile: c.NetrcFile}); err != nil {
			bad("netrc_file: %s; want a readable netrc file of \"machine HOST login USER password PASS\" entries",
				strings.TrimPrefix(err.Error(), "netrc file "))
			ok = false
		}
	}
	if *c.RequireSigs && len(c.TrustedPublicKeys) == 0 {
		how := "is true"
		if sigsDefault {
			how = "is true (the default)"
		}
		bad("trusted_public_keys: require_sigs %s but no trusted_public_keys are given, so every path would be refused; "+
			"add the caches' public keys (name:base64), or set require_sigs = false to accept unsigned paths", how)
		ok = false
	}
	c.cache = binarycache.Config{
		Substituters:      c.Substituters,
		TrustedPublicKeys: c.TrustedPublicKeys,
		AcceptUnsigned:    !*c.RequireSigs,
		NetrcFile:         c.NetrcFile,
	}
	switch t := c.StalledDownloadTimeout; {
	case t < 0 || t > maxStallSeconds:
		bad("stalled_download_timeout: %d is outside 1..%d (seconds without a byte before a download's try is given up; 0 or unset: %d)",
			t, maxStallSeconds, int(binarycache.DefaultStallTimeout/time.Second))
		ok = false
	case t > 0:
		c.cache.StallTimeout = time.Duration(t) * time.Second
	}
	switch a := c.DownloadAttempts; {
	case a < 0 || a > maxDownloadAttempts:
		bad("download_attempts: %d is outside 1..%d (tries of each download; 0 or unset: %d)", a, maxDownloadAttempts, binarycache.DefaultRetries+1)
		ok = false
	case a == 1:
		c.cache.Retries = -1 // none
	case a > 1:
		c.cache.Retries = a - 1
	}
	if ok {
		// Whatever else New checks, here rather than when the build starts.
		if _, err := binarycache.New(c.cache); err != nil {
			bad("substituters: %v", err)
		}
	}
}

// Bounds of stalled_download_timeout (a day) and download_attempts.
const (
	maxStallSeconds     = 86400
	maxDownloadAttempts = 100
)

// FromCache says the closure comes from binary caches (substituters is set).
func (c *Config) FromCache() bool { return len(c.Substituters) > 0 }
