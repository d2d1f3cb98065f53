package nixos

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
)

func TestStepPlanHaltsWhenTheDiskIsTooSmall(t *testing.T) {
	state, ui := newState(prepared(t, map[string]interface{}{"disk_size": "1M"}))
	state.Put("closure", testClosure(t))
	requireHalt(t, (&stepPlan{}).Run(context.Background(), state), state, ui, `disk_size: 1M is too small for this closure: the image needs at least`)
	if _, ok := state.GetOk("plan"); ok {
		t.Error("a plan was put in the state bag")
	}
}

// A provisioner's upload may not replace a store path at the store
// filesystem's root.
func TestStepPlanHaltsWhenAnUploadTakesAStorePath(t *testing.T) {
	state, ui := newState(prepared(t, nil))
	closure := testClosure(t)
	state.Put("closure", closure)
	comm := &storeComm{dir: t.TempDir()}
	taken := filepath.Base(closure[0].Path)
	if err := os.WriteFile(filepath.Join(comm.dir, taken), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	state.Put("store_comm", comm)
	requireHalt(t, (&stepPlan{}).Run(context.Background(), state), state, ui, "a provisioner uploaded /"+taken+", which the store image already holds")
}

// The plan holds the closure with the configured identifiers; Cleanup
// leaves it for the writing step.
func TestStepPlanPlansTheImage(t *testing.T) {
	c := prepared(t, map[string]interface{}{"partition_table_type": "efi", "additional_space": "0"})
	state, ui := newState(c)
	state.Put("closure", testClosure(t))
	step := &stepPlan{}
	requireContinue(t, step.Run(context.Background(), state), state)
	step.Cleanup(state)
	p, ok := state.Get("plan").(*plan)
	if !ok {
		t.Fatal("no plan in the state bag")
	}
	uuid, _ := ParseUUID(DefaultRootGUID)
	if p.fs.UUID != uuid || p.fs.HashSeed != hashSeed(uuid) || p.epoch != 1 || p.fs.Label != "nix-store" {
		t.Errorf("filesystem %+v, epoch %d; want the deterministic defaults", p.fs, p.epoch)
	}
	if _, ok := p.layout.Find(disk.RoleESP); !ok || p.stats.Files != 2 {
		t.Errorf("layout %+v, measured %+v; want an ESP and the closure's 2 files", p.layout, p.stats)
	}
	if !strings.Contains(ui.out.String(), "efi layout") {
		t.Errorf("the user was told %q; want the layout", ui.out)
	}
}
