package toplevel

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
)

// Bootspec keys (RFC 0125, nixos/modules/system/activation/bootspec.nix).
const (
	bootspecV1       = "org.nixos.bootspec.v1"
	specialisationV1 = "org.nixos.specialisation.v1"
)

// maxSpecialisationDepth bounds how deep specialisations nest in a
// boot.json (each level is a specialisation's own boot.json).
const maxSpecialisationDepth = 8

// readBootspec reads boot.json for initrd secrets: bootspec lists
// initrdSecrets, the script that appends boot.initrd.secrets to the
// initrd, only when there are some.
func (r Reader) readBootspec(s *System) error {
	b, err := r.readFile(s.Path, "boot.json", maxText)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // before bootspec (NixOS 23.05), or boot.bootspec.enable = false
	}
	if err != nil {
		return err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%s: not a bootspec document: %w", filepath.Join(s.Path, "boot.json"), err)
	}
	s.InitrdSecrets, err = initrdSecrets(doc, "", 0)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(s.Path, "boot.json"), err)
	}
	return nil
}

// initrdSecrets lists the bootspecs in doc that have initrd secrets, doc
// being the specialisation spec ("" for the system itself).
func initrdSecrets(doc map[string]json.RawMessage, spec string, depth int) ([]string, error) {
	if depth > maxSpecialisationDepth {
		return nil, fmt.Errorf("specialisations nest deeper than %d levels", maxSpecialisationDepth)
	}
	var out []string
	if raw, ok := doc[bootspecV1]; ok {
		var v1 struct {
			InitrdSecrets *string `json:"initrdSecrets"`
		}
		if err := json.Unmarshal(raw, &v1); err != nil {
			return nil, fmt.Errorf("%s: %w", bootspecV1, err)
		}
		if v1.InitrdSecrets != nil && *v1.InitrdSecrets != "" {
			where := "boot.json"
			if spec != "" {
				where += " (specialisation " + spec + ")"
			}
			out = append(out, where)
		}
	}
	if raw, ok := doc[specialisationV1]; ok {
		var specs map[string]map[string]json.RawMessage
		if err := json.Unmarshal(raw, &specs); err != nil {
			return nil, fmt.Errorf("%s: %w", specialisationV1, err)
		}
		names := make([]string, 0, len(specs))
		for n := range specs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			sub, err := initrdSecrets(specs[n], strings.TrimPrefix(spec+"/"+n, "/"), depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
		}
	}
	return out, nil
}
