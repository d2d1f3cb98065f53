package nixos

// installEnv is the environment activation and switch-to-configuration
// run with in the installer VM.
func installEnv(deterministic bool) []string {
	env := []string{
		"PATH=/run/current-system/sw/bin:" + systemProfile + "/sw/bin",
		// A directory outside the image, as make-disk-image.nix points
		// HOME at its build directory: nix-env (systemd-boot's builder
		// lists generations with it) creates ~/.nix-defexpr and
		// ~/.nix-profile, and without HOME Nix makes /homeless-shelter.
		// /tmp is the tmpfs BindSystem mounts (Tmp).
		"HOME=/tmp",
		"LANG=C.UTF-8",
		// Perl's hash order is random per run unless seeded: setup-etc.pl,
		// update-users-groups.pl (the lines it appends to /etc/shadow,
		// /etc/subuid, /etc/subgid) and install-grub.pl iterate hashes.
		"PERL_HASH_SEED=0", "PERL_PERTURB_KEYS=0",
	}
	if deterministic {
		// bootctl would otherwise write a random LoaderSystemToken into
		// the EFI variables (the efi-vars.fd touch_efi_vars keeps).
		env = append(env, "SYSTEMD_WRITE_SYSTEM_TOKEN=0")
	}
	return env
}

// activateEnv is env as nixos-enter runs activation with it.
// IN_NIXOS_ENTER tells activation snippets they are not on a booted
// system; setup-etc.pl then leaves /etc/resolv.conf to nixos-enter, which
// binds the installer's own over it only when there is one. The
// installer VM has none (no network), so like nixos-enter there we bind
// nothing and the image gets no resolv.conf: the system makes its own at
// boot. LOCALE_ARCHIVE spares Perl's locale warnings.
func activateEnv(env []string) []string {
	return append([]string{"IN_NIXOS_ENTER=1", "LOCALE_ARCHIVE=" + systemProfile + "/sw/lib/locale/locale-archive"}, env...)
}
