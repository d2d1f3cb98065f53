package toplevel

import (
	"fmt"
	"slices"
	"strings"
)

// Mount is one etc/fstab entry.
type Mount struct {
	Device, Point, FSType string
	Options               []string
}

// Has says whether the entry carries the mount option opt.
func (m Mount) Has(opt string) bool { return slices.Contains(m.Options, opt) }

// ParseFstab reads an fstab as NixOS writes it
// (nixos/modules/tasks/filesystems.nix): one entry a line, "device
// mount-point type options dump pass" separated by blanks, blanks inside a
// field escaped as \040 (space) and \011 (tab), # comments. An entry needs
// at least a device, a mount point and a type.
func ParseFstab(b []byte) ([]Mount, error) {
	var out []Mount
	for i, line := range strings.Split(string(b), "\n") {
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 3 || len(f) > 6 {
			return nil, fmt.Errorf("line %d: %d fields; an fstab entry has 3 to 6 (device, mount point, type, options, dump, pass)", i+1, len(f))
		}
		m := Mount{}
		var err error
		for k, dst := range []*string{&m.Device, &m.Point, &m.FSType} {
			if *dst, err = unescape(f[k]); err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
		}
		if len(f) > 3 {
			opts, err := unescape(f[3])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			for _, o := range strings.Split(opts, ",") {
				if o != "" {
					m.Options = append(m.Options, o)
				}
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// unescape undoes fstab's octal escapes (\040 for a space); a backslash not
// followed by three octal digits is an error, as is a NUL.
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) || !isOctal(s[i+1]) || !isOctal(s[i+2]) || !isOctal(s[i+3]) || s[i+1] > '3' {
			return "", fmt.Errorf("%q: a backslash must start an octal escape such as \\040", s)
		}
		c := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
		if c == 0 {
			return "", fmt.Errorf("%q: \\000 escapes a NUL", s)
		}
		b.WriteByte(c)
		i += 3
	}
	return b.String(), nil
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
