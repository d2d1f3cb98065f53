package fat

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/fatspec"
)

const maxLongName = 255 // UTF-16 code units

// validName checks one path component against what VFAT can store.
func validName(c string) error {
	switch {
	case c == "" || c == "." || c == "..":
		return errors.New("empty, . or .. component (no leading, trailing or double slash)")
	case !utf8.ValidString(c):
		return errors.New("not valid UTF-8")
	case strings.HasSuffix(c, ".") || strings.HasSuffix(c, " "):
		// Windows and Linux strip these on lookup, so the entry could not be opened.
		return errors.New("trailing dot or space")
	case len(utf16.Encode([]rune(c))) > maxLongName:
		return fmt.Errorf("component longer than %d UTF-16 units", maxLongName)
	}
	for _, r := range c {
		if r < 0x20 || strings.ContainsRune(`"*/:<>?\|`, r) {
			return fmt.Errorf("character %q not allowed in FAT names", r)
		}
	}
	return nil
}

// foldKey is the case-insensitive identity of a name within a directory.
func foldKey(name string) string { return strings.ToUpper(name) }

// shortChar reports whether c may appear in a short (8.3) name as is.
func shortChar(c byte) bool {
	switch {
	case c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	case c >= 0x80 || c <= 0x20:
		return false // non-ASCII would depend on an OEM code page; space needs care
	}
	return strings.IndexByte("!#$%&'()-@^_`{}~", c) >= 0
}

// exact83 returns name's short form if name is already a valid upper-case
// 8.3 name, which needs no long-name entries.
func exact83(name string) (s [11]byte, ok bool) {
	base, ext, dot := strings.Cut(name, ".")
	if len(base) == 0 || len(base) > 8 || len(ext) > 3 || (dot && len(ext) == 0) || strings.Contains(ext, ".") {
		return s, false
	}
	for i := 0; i < len(name); i++ {
		if name[i] != '.' && !shortChar(name[i]) {
			return s, false
		}
	}
	fill11(&s, base, ext)
	return s, true
}

func fill11(s *[11]byte, base, ext string) {
	for i := range s {
		s[i] = ' '
	}
	copy(s[:8], base)
	copy(s[8:], ext)
}

// basis derives the short-name basis from a long name, after the spec's
// algorithm: upper-case, replace what a short name cannot hold with '_',
// drop spaces and leading or embedded periods, keep 8 characters before the
// last period and 3 after. exact is false when anything was lost, in which
// case the short name needs a numeric tail to be told apart.
func basis(name string) (base, ext string, exact bool) {
	exact = true
	conv := func(s string) string {
		var b strings.Builder
		for _, r := range s {
			if r >= 'a' && r <= 'z' {
				r -= 'a' - 'A'
			}
			switch {
			case r == ' ' || r == '.':
				exact = false
			case r < utf8.RuneSelf && shortChar(byte(r)):
				b.WriteByte(byte(r))
			default:
				b.WriteByte('_')
				exact = false
			}
		}
		return b.String()
	}
	stem, suffix := name, ""
	if i := strings.LastIndexByte(name, '.'); i > 0 && strings.TrimLeft(name[:i], ". ") != "" {
		stem, suffix = name[:i], name[i+1:]
	}
	base, ext = conv(stem), conv(suffix)
	if len(base) > 8 {
		base, exact = base[:8], false
	}
	if len(ext) > 3 {
		ext, exact = ext[:3], false
	}
	if base == "" {
		base, exact = "_", false
	}
	return base, ext, exact
}

// shortNames assigns each entry of d a short name unique in d and marks
// which need long-name entries. Names that are exact (valid 8.3 as given,
// or only differing in case) claim theirs first; the rest get the lowest
// free numeric tail in sorted order. Both passes depend only on the set of
// names, never on the order of calls.
func (d *dir) shortNames() error {
	used := make(map[[11]byte]bool, len(d.ents))
	var rest []int
	for i := range d.ents {
		e := &d.ents[i]
		if s, ok := exact83(e.name); ok {
			e.short = s
			used[s] = true
			continue
		}
		e.lfn = true
		if base, ext, exact := basis(e.name); exact {
			var s [11]byte
			fill11(&s, base, ext)
			if !used[s] {
				e.short = s
				used[s] = true
				continue
			}
		}
		rest = append(rest, i)
	}
	next := map[string]int{} // basis -> lowest tail not yet tried
	for _, i := range rest {
		e := &d.ents[i]
		base, ext, _ := basis(e.name)
		key := base + "." + ext
		for n := max(next[key], 1); ; n++ {
			tail := "~" + strconv.Itoa(n)
			if len(tail) > 8 {
				return fmt.Errorf("fat: %q: no free short name", e.name)
			}
			var s [11]byte
			fill11(&s, base[:min(len(base), 8-len(tail))]+tail, ext)
			if !used[s] {
				e.short = s
				used[s] = true
				next[key] = n + 1
				break
			}
		}
	}
	return nil
}

// checksum is the short-name checksum stored in each long-name entry.
func checksum(s [11]byte) byte {
	var sum byte
	for _, c := range s {
		sum = (sum>>1 | sum<<7) + c
	}
	return sum
}

// longEntries returns the long-name entries for name, in on-disk order
// (the last piece first, flagged 0x40).
func longEntries(name string, sum byte) []byte {
	u := utf16.Encode([]rune(name))
	n := (len(u) + 12) / 13
	out := make([]byte, n*32)
	slots := [13]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30}
	for k := 1; k <= n; k++ {
		e := out[(n-k)*32 : (n-k+1)*32]
		e[0] = byte(k)
		if k == n {
			e[0] |= 0x40
		}
		e[fatspec.DirAttr] = fatspec.AttrLongName
		e[13] = sum
		for j, at := range slots {
			i := (k-1)*13 + j
			v := uint16(0xFFFF) // padding after the terminator
			switch {
			case i < len(u):
				v = u[i]
			case i == len(u):
				v = 0
			}
			e[at], e[at+1] = byte(v), byte(v>>8)
		}
	}
	return out
}

// volumeLabel validates and upper-cases a label, padded to 11 bytes.
func volumeLabel(l string) ([11]byte, error) {
	var s [11]byte
	if l == "" {
		copy(s[:], "NO NAME    ")
		return s, nil
	}
	u := strings.ToUpper(l)
	if len(u) > 11 {
		return s, fmt.Errorf("fat: label %q longer than 11 characters", l)
	}
	if u[0] == ' ' {
		return s, fmt.Errorf("fat: label %q starts with a space", l)
	}
	for i := 0; i < len(u); i++ {
		if u[i] != ' ' && !shortChar(u[i]) {
			return s, fmt.Errorf("fat: label %q: character %q not allowed", l, u[i])
		}
	}
	for i := range s {
		s[i] = ' '
	}
	copy(s[:], u)
	return s, nil
}
