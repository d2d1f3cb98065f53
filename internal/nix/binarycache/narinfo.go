package binarycache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/storepath"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
)

// maxNarSize bounds NarSize and FileSize (64 TiB): sums over MaxClosurePaths paths
// cannot overflow.
const maxNarSize = 1 << 46

// StoreDir is the only store directory a cache may serve: the image's store is /nix/store.
const StoreDir = storepath.StoreDir

// PathInfo is one store path as a cache describes it, checked: its narinfo named the path
// asked for, was signed by a trusted key (unless signatures are not required), and every
// field the NAR fetch and the registration use parsed.
type PathInfo struct {
	Path       string   // /nix/store/<hash>-<name>
	References []string // full store paths, sorted, unique (may include Path)
	Deriver    string   // full .drv path, or ""
	NarHash    *nixhash.Hash
	NarSize    uint64
	// Compression of the file at URL: none, xz, zstd or bzip2.
	Compression string
	URL         string        // relative to the substituter
	FileHash    *nixhash.Hash // nil when the cache gives none (nix-serve)
	FileSize    uint64        // 0 when the cache gives none
	// SignedBy names the trusted key whose signature verified, "" if none did.
	SignedBy string

	sub *substituter
}

// Substituter is the cache the narinfo came from (credentials redacted).
func (p *PathInfo) Substituter() string { return p.sub.name }

// NixstoreInfo converts p for nixstore.WriteRegistration and the builder's closure steps.
func (p *PathInfo) NixstoreInfo() nixstore.PathInfo {
	return nixstore.PathInfo{
		Path:       p.Path,
		NarHash:    p.NarHash.Format(nixhash.Base16, true),
		Deriver:    p.Deriver,
		NarSize:    int64(p.NarSize), // checkNarInfo bounds it by maxNarSize
		References: slices.Clone(p.References),
	}
}

// narInfoKeys are the fields Nix writes; others (newer or third-party fields) are ignored,
// as Nix ignores them, rather than refused by go-nix's strict parser.
var narInfoKeys = []string{"StorePath", "URL", "Compression", "FileHash", "FileSize",
	"NarHash", "NarSize", "References", "Deriver", "System", "Sig", "CA"}

// ParseNarInfo parses and checks a narinfo body that should describe want (a full store
// path), verifying its signatures against keys. With requireSigs, a narinfo with no
// signature from keys that verifies is refused.
func ParseNarInfo(body []byte, want string, keys []signature.PublicKey, requireSigs bool) (*PathInfo, error) {
	if len(body) > MaxNarInfoSize {
		return nil, fmt.Errorf("narinfo for %s: larger than %d bytes", want, MaxNarInfoSize)
	}
	var kept bytes.Buffer
	for line := range bytes.Lines(body) {
		k, _, ok := bytes.Cut(line, []byte(": "))
		if ok && slices.Contains(narInfoKeys, string(k)) {
			kept.Write(line)
		}
	}
	ni, err := narinfo.Parse(&kept)
	if err != nil {
		return nil, fmt.Errorf("narinfo for %s: %w", want, err)
	}
	p, err := checkNarInfo(ni, want)
	if err != nil {
		return nil, fmt.Errorf("narinfo for %s: %w", want, err)
	}
	fp := ni.Fingerprint()
	for _, k := range keys {
		for _, s := range ni.Signatures {
			if k.Verify(fp, s) {
				p.SignedBy = k.Name
				return p, nil
			}
		}
	}
	if !requireSigs {
		return p, nil
	}
	var tried []string
	for _, k := range keys {
		tried = append(tried, k.Name)
	}
	var sigs []string
	for _, s := range ni.Signatures {
		sigs = append(sigs, s.Name)
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("%s is not signed; trusted keys: %s", want, strings.Join(tried, ", "))
	}
	// A signature by a trusted key's name that does not verify means the
	// narinfo (its NarHash, NarSize or References) is not what was signed.
	var forged []string
	for _, s := range sigs {
		if slices.Contains(tried, s) {
			forged = append(forged, s)
		}
	}
	if len(forged) > 0 {
		return nil, fmt.Errorf("%s has no valid signature from a trusted key: the signature by %s does not match this narinfo (its NarHash, NarSize or References were changed after signing, or the key was); trusted keys tried: %s",
			want, strings.Join(forged, ", "), strings.Join(tried, ", "))
	}
	return nil, fmt.Errorf("%s has no valid signature from a trusted key: signed by %s; trusted keys tried: %s",
		want, strings.Join(sigs, ", "), strings.Join(tried, ", "))
}

func checkNarInfo(ni *narinfo.NarInfo, want string) (*PathInfo, error) {
	if ni.StorePath != want {
		return nil, fmt.Errorf("describes %q, not the path asked for", ni.StorePath)
	}
	if err := ni.Check(); err != nil { // go-nix: StorePath, References and Deriver well formed
		return nil, err
	}
	if ni.NarHash == nil || ni.NarHash.Algo() != nixhash.SHA256 {
		return nil, errors.New("no sha256 NarHash")
	}
	if ni.NarSize == 0 || ni.NarSize > maxNarSize {
		return nil, fmt.Errorf("NarSize %d out of range", ni.NarSize)
	}
	if ni.FileSize > maxNarSize {
		return nil, fmt.Errorf("FileSize %d out of range", ni.FileSize)
	}
	switch ni.Compression {
	case "none", "xz", "zstd", "bzip2":
	default:
		return nil, fmt.Errorf("unsupported Compression %q", ni.Compression)
	}
	if ni.URL == "" {
		return nil, errors.New("no URL")
	}
	if _, err := (&substituter{dir: "/"}).resolve(ni.URL); err != nil {
		return nil, err
	}
	p := &PathInfo{
		Path:        ni.StorePath,
		NarHash:     &ni.NarHash.Hash,
		NarSize:     ni.NarSize,
		Compression: ni.Compression,
		URL:         ni.URL,
		FileSize:    ni.FileSize,
	}
	if ni.FileHash != nil {
		if ni.FileHash.Algo() != nixhash.SHA256 {
			return nil, fmt.Errorf("FileHash %s: only sha256 is supported", ni.FileHash.Algo())
		}
		p.FileHash = &ni.FileHash.Hash
	}
	if ni.Deriver != "" {
		p.Deriver = StoreDir + "/" + ni.Deriver
	}
	for _, r := range ni.References {
		p.References = append(p.References, StoreDir+"/"+r)
	}
	slices.Sort(p.References)
	p.References = slices.Compact(p.References)
	return p, nil
}

// hashPart returns the 32-character hash of a full store path, after validating it.
func hashPart(p string) (string, error) {
	sp, err := storepath.FromAbsolutePath(p)
	if err != nil {
		return "", fmt.Errorf("%q is not a store path: %w", p, err)
	}
	if sp.Absolute() != p {
		return "", fmt.Errorf("%q is not a store path in canonical form", p)
	}
	return strings.TrimPrefix(p, StoreDir+"/")[:32], nil
}

// PathInfo fetches and checks the narinfo of one store path, trying each substituter in
// order; ErrNotFound is wrapped if none has it.
func (c *Client) PathInfo(ctx context.Context, storePath string) (*PathInfo, error) {
	p, _, err := c.pathInfo(ctx, storePath)
	return p, err
}

func (c *Client) pathInfo(ctx context.Context, storePath string) (*PathInfo, int, error) {
	h, err := hashPart(storePath)
	if err != nil {
		return nil, 0, err
	}
	var errs []error
	notFound := true
	for _, s := range c.subs {
		body, err := c.readSmall(ctx, s, h+".narinfo", MaxNarInfoSize)
		if err != nil {
			if ctx.Err() != nil {
				return nil, 0, err
			}
			notFound = notFound && errors.Is(err, ErrNotFound)
			errs = append(errs, err)
			continue
		}
		p, err := ParseNarInfo(body, storePath, c.keys, c.requireSigs)
		if err != nil {
			// A bad answer from a cache is not a reason to try another: Nix refuses too,
			// and a tampered cache should stop the build loudly.
			return nil, 0, fmt.Errorf("%s: %w", s.display(h+".narinfo"), err)
		}
		p.sub = s
		return p, len(body), nil
	}
	err = errors.Join(errs...)
	if notFound {
		return nil, 0, fmt.Errorf("%s is in no substituter: %w", storePath, err)
	}
	return nil, 0, fmt.Errorf("%s: no substituter answered: %w", storePath, err)
}
