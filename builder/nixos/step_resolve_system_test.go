package nixos

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestStepResolveSystemHaltsWhenTheBuildFails(t *testing.T) {
	c := prepared(t, map[string]interface{}{"only_nix_store": false, "system": "", "flake": "/src#host"})
	state, ui := newState(c)
	nix := &fakeNix{err: errFake}
	state.Put("nix", nix)
	requireHalt(t, (&stepResolveSystem{}).Run(context.Background(), state), state, ui, "flake: fake failure")
	if !slices.Equal(nix.built, []string{"flake /src host"}) {
		t.Errorf("built %q; want the flake's configuration host", nix.built)
	}
	if _, ok := state.GetOk("system"); ok {
		t.Error("a system was put in the state bag")
	}
}

func TestStepResolveSystemRefusesWhatIsNotASystem(t *testing.T) {
	c := prepared(t, map[string]interface{}{"only_nix_store": false, "system": "", "nix_file": "/src/default.nix"})
	state, ui := newState(c)
	nix := &fakeNix{system: t.TempDir()}
	state.Put("nix", nix)
	requireHalt(t, (&stepResolveSystem{}).Run(context.Background(), state), state, ui,
		"nix_file: "+nix.system+" is not a NixOS system (config.system.build.toplevel): it has no bin/switch-to-configuration")
	if !slices.Equal(nix.built, []string{"file /src/default.nix config.system.build.toplevel"}) {
		t.Errorf("built %q; want the file's default attribute", nix.built)
	}
}

// The built system, its kernel, and Cleanup keeping it for the later steps.
func TestStepResolveSystemPutsTheSystem(t *testing.T) {
	c := prepared(t, map[string]interface{}{"only_nix_store": false, "system": "", "flake": "/src#host"})
	state, _ := newState(c)
	system := testToplevel(t)
	state.Put("nix", &fakeNix{system: system})
	step := &stepResolveSystem{}
	requireContinue(t, step.Run(context.Background(), state), state)
	step.Cleanup(state)
	got, ok := state.Get("system").(*toplevel)
	if !ok || got.path != system || got.kernel != filepath.Join(system, "kernel") || got.modulesDir != "" {
		t.Fatalf("system %+v; want %s with its kernel and no modules", got, system)
	}
}

// A system for a platform install mode cannot boot is refused before any
// work, naming it and what to do instead; x86_64-linux and aarch64-linux
// systems, or one without the file, are taken, each with its own VM.
func TestStepResolveSystemRefusesOtherPlatforms(t *testing.T) {
	for platform, arch := range map[string]string{"riscv64-linux": "", "aarch64-linux": "aarch64", "x86_64-linux\n": "x86_64", "": "x86_64"} {
		c := prepared(t, map[string]interface{}{"only_nix_store": false, "system": "", "flake": "/src#host", "partition_table_type": "efi"})
		state, ui := newState(c)
		system := testToplevel(t)
		if platform != "" {
			if err := os.WriteFile(filepath.Join(system, "system"), []byte(platform), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		state.Put("nix", &fakeNix{system: system})
		action := (&stepResolveSystem{}).Run(context.Background(), state)
		if arch != "" {
			requireContinue(t, action, state)
			if got := state.Get("system").(*toplevel).arch.Name; got != arch {
				t.Errorf("%q: installer VM for %s, want %s", platform, got, arch)
			}
			continue
		}
		requireHalt(t, action, state, ui, `flake: `+system+` is a NixOS system for "riscv64-linux": install mode boots the system's own kernel in QEMU, for x86_64-linux and aarch64-linux systems only; build a store-only image of it (only_nix_store = true) instead`)
	}
}

// The kernel's header decides a system without a `system` file and must
// agree with one that has it.
func TestSystemArchFromKernel(t *testing.T) {
	dir := t.TempDir()
	bz := make([]byte, 0x400)
	copy(bz[0x202:], "HdrS")
	img := make([]byte, 0x400)
	copy(img[0x38:], "ARM\x64")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bzImage, armImage := write("bzImage", bz), write("Image", img)
	for _, c := range []struct {
		platform, kernel, want, err string
	}{
		{"", bzImage, "x86_64", ""},
		{"", armImage, "aarch64", ""},
		{"aarch64-linux", armImage, "aarch64", ""},
		{"x86_64-linux", bzImage, "x86_64", ""},
		{"aarch64-linux", bzImage, "", `/sys says it is for "aarch64-linux", but its kernel ` + bzImage + ` is an x86_64 kernel`},
		{"x86_64-linux", armImage, "", `/sys says it is for "x86_64-linux", but its kernel ` + armImage + ` is an aarch64 kernel`},
	} {
		got, err := systemArch("/sys", c.platform, c.kernel)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("%q %s: error %v, want %s", c.platform, c.kernel, err, c.err)
			}
			continue
		}
		if err != nil || got.Name != c.want {
			t.Errorf("%q %s: %s %v, want %s", c.platform, c.kernel, got.Name, err, c.want)
		}
	}
	// The host's own kernel, a real bzImage.
	if real, _ := filepath.Glob("/boot/vmlinuz-*"); len(real) > 0 {
		if a, err := kernelArch(real[0]); err != nil || a.Name != "x86_64" {
			t.Errorf("%s: %s %v, want x86_64", real[0], a.Name, err)
		}
	}
}

// An aarch64 system has no PC BIOS: the BIOS layouts are refused before
// any work, and so is KVM on this (x86_64) host.
func TestStepResolveSystemAArch64Refusals(t *testing.T) {
	for _, c := range []struct {
		cfg  map[string]interface{}
		want string
	}{
		{map[string]interface{}{"partition_table_type": "legacy"}, `partition_table_type: "legacy" boots through a PC BIOS, which an aarch64 system does not have; use efi, efixbootldr or none`},
		{map[string]interface{}{"partition_table_type": "hybrid"}, `partition_table_type: "hybrid" boots through a PC BIOS, which an aarch64 system does not have; use efi, efixbootldr or none`},
		{map[string]interface{}{"partition_table_type": "efi", "accelerator": "kvm"}, `accelerator: kvm runs only guests of the host's architecture (amd64), and this is an aarch64 system; use auto or tcg`},
	} {
		cfg := map[string]interface{}{"only_nix_store": false, "system": "", "flake": "/src#host"}
		for k, v := range c.cfg {
			cfg[k] = v
		}
		state, ui := newState(prepared(t, cfg))
		system := testToplevel(t)
		if err := os.WriteFile(filepath.Join(system, "system"), []byte("aarch64-linux"), 0o644); err != nil {
			t.Fatal(err)
		}
		state.Put("nix", &fakeNix{system: system})
		requireHalt(t, (&stepResolveSystem{}).Run(context.Background(), state), state, ui, c.want)
	}
}

// Ctrl-C while nix runs: nix is killed, and a child of its still holding
// the output pipes (git fetching a flake input) does not keep the step
// waiting for it.
func TestRunNixReturnsOnCancelDespiteChildren(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "fake-nix")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nsleep 30 &\nsleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := runNix(ctx, fake); err == nil {
		t.Fatal("runNix succeeded after its context ended")
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("runNix returned %v after a 300 ms context: it waited for the child holding its pipes", d.Round(time.Second))
	}
}
