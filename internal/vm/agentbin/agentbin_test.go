package agentbin

import (
	"bytes"
	"debug/elf"
	"path/filepath"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentbin/srchash"
)

// The embedded agent is there, static, for its architecture, and built
// from the sources in this tree: an agent left from older sources (a go
// build without go generate after changing the agent) fails here.
func TestEmbeddedAgentIsCurrent(t *testing.T) {
	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64} {
		data, hash, ok := Agent(arch)
		if !ok {
			t.Fatalf("no %s agent embedded: run `make build` (or go generate ./internal/vm/agentbin) first", arch)
		}
		f, err := elf.NewFile(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s agent: %v", arch, err)
		}
		if f.Machine != machine {
			t.Errorf("%s agent is for %v", arch, f.Machine)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s agent is dynamically linked: it cannot be an initrd's /init", arch)
			}
		}
		root, err := filepath.Abs("../../..")
		if err != nil {
			t.Fatal(err)
		}
		now, err := srchash.Of(root, srchash.AgentPkg)
		if err != nil {
			t.Fatal(err)
		}
		if hash != now {
			t.Errorf("the embedded %s agent was built from other sources (%s) than this tree's (%s): run `make build` (or go generate ./internal/vm/agentbin)", arch, hash, now)
		}
	}
}

func TestNoAgentForAnUnknownArch(t *testing.T) {
	if _, _, ok := Agent("mips"); ok {
		t.Error("an agent for mips")
	}
}
