package agentbin

import (
	"bytes"
	"debug/elf"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/agentbin/srchash"
)

// machines are the architectures every plugin binary carries an agent
// for, whatever its own: the installer VM runs the installed system's.
var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// The embedded agents are there, static, each for its architecture, and
// built from the sources in this tree: an agent left from older sources (a
// go build without go generate after changing the agent) fails here.
func TestEmbeddedAgentIsCurrent(t *testing.T) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, arch := range slices.Sorted(maps.Keys(machines)) {
		data, hash, ok := Agent(arch)
		if !ok {
			t.Fatalf("no %s agent embedded: run `make build` (or go generate ./internal/vm/agentbin) first", arch)
		}
		f, err := elf.NewFile(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s agent: %v", arch, err)
		}
		if f.Machine != machines[arch] || f.Class != elf.ELFCLASS64 {
			t.Errorf("%s agent is for %v (%v); want %v", arch, f.Machine, f.Class, machines[arch])
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s agent is dynamically linked: it cannot be an initrd's /init", arch)
			}
		}
		now, err := srchash.Of(root, srchash.AgentPkg, arch)
		if err != nil {
			t.Fatal(err)
		}
		if hash != now {
			t.Errorf("the embedded %s agent was built from other sources (%s) than this tree's (%s): run `make build` (or go generate ./internal/vm/agentbin)", arch, hash, now)
		}
	}
}

// gen builds exactly the architectures this test checks: one added there
// but not here would go unchecked.
func TestEmbeddedArchs(t *testing.T) {
	names, err := fs.Glob(bin, "bin/agent-linux-*")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range names {
		if !strings.HasSuffix(n, ".srchash") {
			got = append(got, strings.TrimPrefix(n, "bin/agent-linux-"))
		}
	}
	if want := slices.Sorted(maps.Keys(machines)); !slices.Equal(got, want) {
		t.Errorf("embedded agents for %q; want %q", got, want)
	}
}

func TestNoAgentForAnUnknownArch(t *testing.T) {
	if _, _, ok := Agent("mips"); ok {
		t.Error("an agent for mips")
	}
}
