package nixos

import (
	"context"
	"slices"
	"testing"
)

// Activation and switch-to-configuration run as nixos-enter and
// make-disk-image.nix run them, with what settles their output: HOME on
// the installer's tmpfs (no /root/.nix-defexpr, no /homeless-shelter in
// the image), Perl's hash order fixed, and when deterministic no random
// LoaderSystemToken from bootctl. The chroot gets /dev/block links.
func TestStepInstallEnvironment(t *testing.T) {
	for _, deterministic := range []bool{true, false} {
		guest := newFakeGuest()
		q := &fakeQEMU{guest: guest}
		state, _ := installState(t, map[string]interface{}{"partition_table_type": "efi", "deterministic": deterministic}, q)
		step := newStepInstall()
		requireContinue(t, step.Run(context.Background(), state), state)
		step.Cleanup(state)

		if b := guest.bound(); len(b) != 1 || !b[0].BlockLinks || !b[0].Tmp {
			t.Errorf("bind_system %+v; want one, with the /dev/block links and the /tmp tmpfs HOME is on", b)
		}
		common := []string{"HOME=/tmp", "PERL_HASH_SEED=0", "PERL_PERTURB_KEYS=0"}
		for _, c := range []struct {
			cmd          string
			want, refuse []string
		}{
			{"activate", append([]string{"IN_NIXOS_ENTER=1", "LOCALE_ARCHIVE=/nix/var/nix/profiles/system/sw/lib/locale/locale-archive"}, common...), []string{"HOME=/root"}},
			// nixos-enter sets IN_NIXOS_ENTER for activation only.
			{"switch-to-configuration", common, []string{"HOME=/root", "IN_NIXOS_ENTER=1"}},
		} {
			r, ok := guest.exec(c.cmd)
			if !ok {
				t.Fatalf("%s did not run: %q", c.cmd, guest.did())
			}
			want, refuse := c.want, c.refuse
			token := "SYSTEMD_WRITE_SYSTEM_TOKEN=0"
			if deterministic {
				want = append(slices.Clone(want), token)
			} else {
				refuse = append(slices.Clone(refuse), token)
			}
			for _, w := range want {
				if !slices.Contains(r.Env, w) {
					t.Errorf("deterministic=%v: %s's environment %q lacks %s", deterministic, c.cmd, r.Env, w)
				}
			}
			for _, w := range refuse {
				if slices.Contains(r.Env, w) {
					t.Errorf("deterministic=%v: %s's environment %q has %s", deterministic, c.cmd, r.Env, w)
				}
			}
		}
	}
}
