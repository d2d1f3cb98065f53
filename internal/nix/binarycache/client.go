// Package binarycache reads store path closures straight from Nix binary caches (the
// layout `nix copy --to file://…`, nix-serve, harmonia, attic, cachix and S3 over HTTP
// serve): narinfo files fetched and signature-checked, closures walked breadth first,
// NARs spooled compressed to a temporary directory and read back decompressed with their
// hashes verified. No Nix, root or local store is needed.
//
// Everything a cache sends is untrusted: narinfo bodies, NARs (compressed and not) and
// closures are size-bounded by the constants below, whatever the server claims, and
// nothing unverified is trusted beyond its byte count: a NAR's bytes are checked against
// the signed NarHash/NarSize when its last byte is read (readers must read to io.EOF).
package binarycache

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/bgentry/go-netrc/netrc"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

const (
	// MaxNarInfoSize bounds one .narinfo body; go-nix's parser has the same line cap,
	// and a path with thousands of references stays far below it.
	MaxNarInfoSize = 1 << 20
	// MaxClosurePaths bounds a closure (a large NixOS desktop is ~5000 paths).
	MaxClosurePaths = 1 << 16
	// MaxClosureInfoBytes bounds the narinfo bytes of one closure (a 5000-path system
	// has ~4 MiB), so what Closure keeps plus one NAR decoder (XZDictCap, ZstdMaxWindow)
	// stays within the 64 MiB memory budget whatever the cache sends.
	MaxClosureInfoBytes = 16 << 20
	// DefaultParallel narinfo requests are in flight at once during Closure.
	DefaultParallel = 16
	// maxRedirects per request; a URL seen twice is a loop and refused earlier.
	maxRedirects = 10
	// maxBackoff caps the doubling delay between retries.
	maxBackoff = 30 * time.Second
)

// Defaults for the zero values of Config's timeouts and retries.
const (
	DefaultConnectTimeout        = 30 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultStallTimeout          = 60 * time.Second
	DefaultRetries               = 4
	DefaultBackoff               = 500 * time.Millisecond
)

// Config holds the nix.conf-style settings; only Substituters is required.
type Config struct {
	// Substituters are tried in order for each path: https://, http:// or file:// URLs.
	// Query parameters (Nix store settings such as ?priority=) are ignored.
	Substituters []string
	// TrustedPublicKeys are "name:base64" ed25519 keys (trusted-public-keys).
	TrustedPublicKeys []string
	// AcceptUnsigned is require_sigs = false: paths with no valid signature from a
	// trusted key are accepted (their NAR hash is still checked).
	AcceptUnsigned bool
	// NetrcFile is Nix's netrc-file: "machine HOST login USER password PASS" entries,
	// sent as Basic auth only to HOST. A "default" entry is ignored: credentials never
	// go to a host not named for them.
	NetrcFile string

	ConnectTimeout        time.Duration // TCP connect and TLS handshake; 0 = default
	ResponseHeaderTimeout time.Duration // request sent to response headers; 0 = default
	StallTimeout          time.Duration // longest wait for a response's next bytes (headers too); 0 = default
	// Retries after the first attempt for transient failures (5xx, 429, resets,
	// timeouts, stalls, truncated bodies); 0 = DefaultRetries, negative = none.
	Retries int
	Backoff time.Duration // first delay between attempts, doubling; 0 = default
	// Parallel bounds concurrent narinfo requests in Closure; 0 = DefaultParallel.
	Parallel int
	// Logf, if set, receives retry notices. URLs in messages never carry credentials.
	Logf func(format string, args ...any)
}

// Client fetches from the configured substituters. It is safe for concurrent use.
type Client struct {
	subs        []*substituter
	keys        []signature.PublicKey
	requireSigs bool
	http        *http.Client
	netrc       *netrc.Netrc
	stall       time.Duration
	retries     int
	backoff     time.Duration
	parallel    int
	logf        func(string, ...any)
}

type substituter struct {
	base *url.URL // no query, no trailing slash
	dir  string   // file:// only: the directory
	name string   // for messages: credentials redacted
}

// New validates cfg and returns a Client. It reads the netrc file, if any, but makes no
// request: see CheckStoreDirs.
func New(cfg Config) (*Client, error) {
	if len(cfg.Substituters) == 0 {
		return nil, errors.New("binary cache: no substituters")
	}
	c := &Client{
		requireSigs: !cfg.AcceptUnsigned,
		stall:       orDefault(cfg.StallTimeout, DefaultStallTimeout),
		retries:     cfg.Retries,
		backoff:     orDefault(cfg.Backoff, DefaultBackoff),
		parallel:    cfg.Parallel,
		logf:        cfg.Logf,
	}
	if c.retries == 0 {
		c.retries = DefaultRetries
	} else if c.retries < 0 {
		c.retries = 0
	}
	if c.parallel <= 0 {
		c.parallel = DefaultParallel
	}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	for _, s := range cfg.Substituters {
		sub, err := parseSubstituter(s)
		if err != nil {
			return nil, err
		}
		c.subs = append(c.subs, sub)
	}
	for _, k := range cfg.TrustedPublicKeys {
		pk, err := signature.ParsePublicKey(strings.TrimSpace(k))
		if err != nil {
			return nil, fmt.Errorf("trusted public key %q: %w", k, err)
		}
		c.keys = append(c.keys, pk)
	}
	if c.requireSigs && len(c.keys) == 0 {
		return nil, errors.New("binary cache: signatures are required but no trusted public keys are given")
	}
	if cfg.NetrcFile != "" {
		n, err := netrc.ParseFile(cfg.NetrcFile)
		if err != nil {
			// The parser's message may quote the file; name the file only.
			var perr *os.PathError
			if errors.As(err, &perr) {
				return nil, fmt.Errorf("netrc file %s: %w", cfg.NetrcFile, perr.Err)
			}
			return nil, fmt.Errorf("netrc file %s: cannot parse", cfg.NetrcFile)
		}
		c.netrc = n
	}
	dialer := &net.Dialer{Timeout: orDefault(cfg.ConnectTimeout, DefaultConnectTimeout)}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   orDefault(cfg.ConnectTimeout, DefaultConnectTimeout),
		ResponseHeaderTimeout: orDefault(cfg.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
		MaxIdleConnsPerHost:   c.parallel,
		ForceAttemptHTTP2:     true,
		// NARs are compressed already; a transparent gzip layer would defeat FileSize.
		DisableCompression: true,
	}
	c.http = &http.Client{
		Transport:     &authTransport{base: tr, netrc: c.netrc},
		CheckRedirect: checkRedirect,
	}
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func parseSubstituter(s string) (*substituter, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("substituter %q: %w", s, err)
	}
	u.RawQuery, u.Fragment = "", ""
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	sub := &substituter{base: u, name: u.Redacted()}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("substituter %q: no host", sub.name)
		}
	case "file":
		if u.Host != "" && u.Host != "localhost" || u.Path == "" {
			return nil, fmt.Errorf("substituter %q: want file:///absolute/dir", sub.name)
		}
		sub.dir = u.Path
	default:
		return nil, fmt.Errorf("substituter %q: scheme must be https, http or file", sub.name)
	}
	return sub, nil
}

// checkRedirect refuses loops, long chains and https→http downgrades.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("more than %d redirects", maxRedirects)
	}
	for _, v := range via {
		if v.URL.String() == req.URL.String() {
			return fmt.Errorf("redirect loop at %s", req.URL.Redacted())
		}
	}
	if via[len(via)-1].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing redirect from https to %s", req.URL.Redacted())
	}
	return nil
}

// authTransport adds netrc credentials to each request, redirects included, by the
// request's own host, so a redirect elsewhere never carries them.
type authTransport struct {
	base  http.RoundTripper
	netrc *netrc.Netrc
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.netrc != nil && req.Header.Get("Authorization") == "" {
		if m := t.netrc.FindMachine(req.URL.Hostname()); m != nil && !m.IsDefault() && m.Name != "" {
			req = req.Clone(req.Context())
			req.SetBasicAuth(m.Login, m.Password)
		}
	}
	return t.base.RoundTrip(req)
}
