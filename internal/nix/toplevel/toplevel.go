// Package toplevel reads what a NixOS system's toplevel
// (config.system.build.toplevel) wants from an installer: the mount points of
// its EFI system partition and XBOOTLDR partition from etc/fstab, the boot
// loader from the INSTALL_BOOTLOADER script bin/switch-to-configuration
// runs, GRUB's grub-config.xml (the devices it installs onto, its ESP, whether
// it may write EFI variables), the mount points baked into systemd-boot's
// builder, and bootspec's boot.json (initrd secrets).
//
// The toplevel comes from the user's Nix store, so it is trusted no more than
// any input: every file is read with a size bound, and a file that is there
// but malformed is an error naming it. What the system does not say (no
// fstab, a boot loader this package does not know) is left empty, not
// guessed.
package toplevel

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Size bounds: the text files a toplevel names are a few KiB; a
// switch-to-configuration may be the Rust binary itself when unwrapped.
const (
	maxText   = 1 << 20
	maxBinary = 32 << 20
)

// System is what a toplevel says about its installation.
type System struct {
	Path string

	// Platform is the Nix platform the system was built for (its
	// `system` file, e.g. "x86_64-linux"); "" when it has none.
	Platform string

	// Fstab is etc/fstab's entries; nil when the system has no etc/fstab.
	Fstab []Mount
	// InstallBootloader is the store path of the script
	// switch-to-configuration boot runs to install the boot loader
	// (system.build.installBootLoader); "" when it could not be found.
	InstallBootloader string
	// Loader is the boot loader that script installs.
	Loader Loader
	// SystemdBoot is what systemd-boot's builder has baked in, when Loader
	// is SystemdBoot and the builder was recognised.
	SystemdBoot *SystemdBoot
	// GRUB holds one configuration per boot.loader.grub.mirroredBoots
	// entry (usually one), when Loader is GRUB.
	GRUB []GRUB
	// InitrdSecrets names the bootspecs that list initrd secrets: "boot.json",
	// or "boot.json (specialisation NAME)".
	InitrdSecrets []string
}

// Loader is a boot loader install-bootloader script.
type Loader int

const (
	// LoaderUnknown: no INSTALL_BOOTLOADER found, or a loader this package
	// does not read (extlinux, limine...).
	LoaderUnknown Loader = iota
	LoaderSystemdBoot
	LoaderGRUB
)

func (l Loader) String() string {
	switch l {
	case LoaderSystemdBoot:
		return "systemd-boot"
	case LoaderGRUB:
		return "GRUB"
	}
	return "an unknown boot loader"
}

// Read reads the toplevel at path, whose store paths live in /nix/store.
func Read(path string) (*System, error) { return Reader{}.Read(path) }

// Reader reads toplevels whose store is StoreDir (default /nix/store).
type Reader struct {
	StoreDir string
	// Resolve maps a path in the store to where its file can be read
	// (storeview.View.Resolve, for a system that is only NARs); nil reads
	// the path itself.
	Resolve func(string) (string, error)
}

func (r Reader) storeDir() string {
	if r.StoreDir == "" {
		return "/nix/store"
	}
	return filepath.Clean(r.StoreDir)
}

// Read reads what the toplevel at path wants from its installer.
func (r Reader) Read(path string) (*System, error) {
	s := &System{Path: path}
	platform, err := r.readFile(path, "system", maxText)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		s.Platform = strings.TrimSpace(string(platform))
	}
	fstab, err := r.readFile(path, "etc/fstab", maxText)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if s.Fstab, err = ParseFstab(fstab); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(path, "etc/fstab"), err)
		}
		if s.Fstab == nil {
			s.Fstab = []Mount{}
		}
	}
	if err := r.readLoader(s); err != nil {
		return nil, err
	}
	if err := r.readBootspec(s); err != nil {
		return nil, err
	}
	return s, nil
}

// readFile reads rel under dir (following symlinks, as the store's links
// are), refusing anything but a regular file of at most limit bytes.
func (r Reader) readFile(dir, rel string, limit int64) ([]byte, error) {
	p := filepath.Join(dir, rel)
	at := p
	if r.Resolve != nil {
		var err error
		if at, err = r.Resolve(p); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(at)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d KiB: not what a NixOS system holds there", p, limit>>10)
	}
	return b, nil
}

// storePathRe matches a store path under dir and what follows it inside
// the path: <dir>/<hash>-<name>[/<sub>...]. The hash is Nix's base32.
func storePathRe(dir string) *regexp.Regexp {
	return regexp.MustCompile(regexp.QuoteMeta(dir) + `/[0-9a-z]{32}-[A-Za-z0-9+._?=-]+(?:/[A-Za-z0-9+._?=-]+)*`)
}

// cleanStorePath refuses a matched path with . or .. components.
func cleanStorePath(p string) bool {
	for _, c := range strings.Split(p, "/") {
		if c == "." || c == ".." {
			return false
		}
	}
	return true
}
