//go:generate packer-sdc mapstructure-to-hcl2 -type Config,Content
//go:generate packer-sdc struct-markdown

// Package contents is the nixos-contents provisioner: make-disk-image's
// `contents` and `configFile`, files copied into the installed system.
package contents

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/common"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
)

// ConfigFileTarget is where `config_file` goes, as make-disk-image's
// `configFile`.
const ConfigFileTarget = "/etc/nixos/configuration.nix"

// Config is the nixos-contents provisioner's configuration.
type Config struct {
	common.PackerConfig `mapstructure:",squash"`

	// A NixOS configuration file to install as /etc/nixos/configuration.nix
	// (mode 0644, owned by root), as make-disk-image's `configFile`.
	ConfigFile string `mapstructure:"config_file" required:"false"`
	// Files to copy into the installed system, as make-disk-image's
	// `contents`. May be repeated.
	Contents []Content `mapstructure:"content" required:"false"`

	ctx interpolate.Context
}

// Content is one `content` block.
type Content struct {
	// A local file, directory, or glob pattern (each match is copied). One of
	// `source` and `inline` is required.
	Source string `mapstructure:"source" required:"false"`
	// The file's contents, written as they are. One of `source` and `inline`
	// is required.
	Inline *string `mapstructure:"inline" required:"false"`
	// The absolute path in the installed system. With a glob that matches
	// several files, or when it ends in `/`, each match goes to
	// `<target>/<basename>`; a directory's contents go into `target`.
	Target string `mapstructure:"target" required:"true"`
	// Octal permissions (`0000` to `07777`) for the files, and for the
	// directories when given. Defaults to each source's own mode (`0644` for
	// `inline`).
	Mode string `mapstructure:"mode" required:"false"`
	// Owner: a user name looked up in the image's /etc/passwd, or a numeric
	// uid. Requires `group`. Defaults to root.
	User string `mapstructure:"user" required:"false"`
	// Group: a name looked up in the image's /etc/group, or a numeric gid.
	// Requires `user`. Defaults to root.
	Group string `mapstructure:"group" required:"false"`

	// Filled by Prepare.
	mode    os.FileMode // valid when hasMode
	hasMode bool
	matches []string // the source's matches (a single entry unless a glob)
	intoDir bool     // each match goes to target/<basename>
	name    string   // how error messages name this block
}

// Prepare decodes and validates the configuration before any work is done.
// Every problem is reported at once, each naming its key and what is allowed.
func (c *Config) Prepare(raws ...interface{}) error {
	if err := config.Decode(c, &config.DecodeOpts{
		PluginType:         "nixos-contents",
		Interpolate:        true,
		InterpolateContext: &c.ctx,
	}, raws...); err != nil {
		return err
	}
	var errs *packersdk.MultiError
	bad := func(format string, a ...interface{}) {
		errs = packersdk.MultiErrorAppend(errs, fmt.Errorf(format, a...))
	}

	// seen maps a target to the block that writes it.
	seen := map[string]string{}
	claim := func(target, who string) {
		if prev, ok := seen[target]; ok {
			bad("%s: target %q is also written by %s; each target may be written once", who, target, prev)
			return
		}
		seen[target] = who
	}

	if c.ConfigFile != "" {
		fi, err := os.Stat(c.ConfigFile)
		switch {
		case err != nil:
			bad("config_file: %v; want an existing regular file", err)
		case !fi.Mode().IsRegular():
			bad("config_file: %q is a %s; want a regular file", c.ConfigFile, kind(fi))
		}
		claim(ConfigFileTarget, fmt.Sprintf("config_file (source %q)", c.ConfigFile))
	}

	for i := range c.Contents {
		ct := &c.Contents[i]
		key := fmt.Sprintf("content[%d]", i)
		switch {
		case ct.Inline != nil:
			ct.name = fmt.Sprintf("%s (inline)", key)
		default:
			ct.name = fmt.Sprintf("%s (source %q)", key, ct.Source)
		}

		switch {
		case ct.Source != "" && ct.Inline != nil:
			bad("%s: source and inline are both set; want exactly one of them", key)
		case ct.Source == "" && ct.Inline == nil:
			bad("%s: neither source nor inline is set; want exactly one of them", key)
		case ct.Source != "":
			if err := ct.resolveSource(); err != nil {
				bad("%s.source: %v", key, err)
			}
		}

		targetOK := true
		if err := checkTarget(ct.Target); err != nil {
			bad("%s.target: %v", key, err)
			targetOK = false
		}
		ct.intoDir = strings.HasSuffix(ct.Target, "/") || len(ct.matches) > 1

		if ct.Mode != "" {
			m, err := parseMode(ct.Mode)
			if err != nil {
				bad("%s.mode: %q is not an octal mode; want a string from \"0000\" to \"07777\", such as \"0640\"", key, ct.Mode)
			}
			ct.mode, ct.hasMode = m, err == nil
		}

		if (ct.User == "") != (ct.Group == "") {
			bad("%s: user %q and group %q: set both or neither", key, ct.User, ct.Group)
		}

		if targetOK {
			for _, t := range ct.targets() {
				claim(t, ct.name)
			}
		}
	}

	if errs != nil && len(errs.Errors) > 0 {
		return errs
	}
	return nil
}

// resolveSource fills matches: the source itself when it exists, else the
// matches of it as a glob pattern.
func (ct *Content) resolveSource() error {
	if _, err := os.Lstat(ct.Source); err == nil {
		ct.matches = []string{ct.Source}
		return ct.checkMatches()
	} else if !hasMeta(ct.Source) {
		return fmt.Errorf("%v; want an existing file or directory, or a glob pattern that matches some", err)
	}
	m, err := filepath.Glob(ct.Source)
	if err != nil {
		return fmt.Errorf("%q is not a valid glob pattern: %v", ct.Source, err)
	}
	if len(m) == 0 {
		return fmt.Errorf("the glob pattern %q matches nothing; want a pattern that matches at least one file or directory", ct.Source)
	}
	ct.matches = m
	return ct.checkMatches()
}

func (ct *Content) checkMatches() error {
	for _, m := range ct.matches {
		fi, err := os.Stat(m)
		if err != nil {
			return fmt.Errorf("%v; want an existing file or directory", err)
		}
		if !fi.Mode().IsRegular() && !fi.IsDir() {
			return fmt.Errorf("%q is a %s; want a regular file or a directory", m, kind(fi))
		}
	}
	return nil
}

// targets are the paths this block writes: one per match.
func (ct *Content) targets() []string {
	if ct.Inline != nil || !ct.intoDir {
		return []string{path.Clean(ct.Target)}
	}
	var res []string
	for _, m := range ct.matches {
		res = append(res, path.Join(ct.Target, filepath.Base(m)))
	}
	return res
}

func hasMeta(s string) bool { return strings.ContainsAny(s, `*?[\`) }

// checkTarget: absolute, no `..`, not in the Nix store.
func checkTarget(t string) error {
	if t == "" {
		return fmt.Errorf("not set; want an absolute path in the installed system, such as /etc/motd")
	}
	if !strings.HasPrefix(t, "/") {
		return fmt.Errorf("%q is not absolute; want an absolute path such as /etc/motd", t)
	}
	for _, c := range strings.Split(t, "/") {
		if c == ".." {
			return fmt.Errorf("%q has a \"..\" component; want a path without \"..\"", t)
		}
	}
	clean := path.Clean(t)
	if clean == "/" {
		return fmt.Errorf("%q is the root directory; want a path below /", t)
	}
	if underStore(clean) {
		return fmt.Errorf("%q is in the Nix store; want a path outside /nix/store, which is read-only and holds only registered paths", t)
	}
	return nil
}

func underStore(p string) bool {
	p = path.Clean(p)
	return p == "/nix/store" || strings.HasPrefix(p, "/nix/store/")
}

func parseMode(s string) (os.FileMode, error) {
	if len(s) < 3 || len(s) > 5 {
		return 0, fmt.Errorf("bad length")
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o7777 {
		return 0, fmt.Errorf("bad mode")
	}
	return unixmode.FileMode(uint32(n)), nil
}

func kind(fi os.FileInfo) string {
	switch t := fi.Mode().Type(); {
	case t&os.ModeSymlink != 0:
		return "symbolic link"
	case t&os.ModeNamedPipe != 0:
		return "named pipe"
	case t&os.ModeSocket != 0:
		return "socket"
	case t&os.ModeDevice != 0:
		return "device"
	case fi.IsDir():
		return "directory"
	}
	return "special file"
}
