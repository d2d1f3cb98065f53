package qemu

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// OVMFDir is where Debian's ovmf package installs the firmware.
const OVMFDir = "/usr/share/OVMF"

// ovmfPairs are code/vars templates from the same build, preferred first.
// Debian 12 ships both: the 4 MiB build (3.5 MiB code + 528 KiB vars, the
// one Debian recommends) and the 2 MiB legacy build (1.9 MiB + 128 KiB).
// The .secboot/.ms variants are left out: Secure Boot code needs SMM and
// enrolled keys, which the installer has no use for.
var ovmfPairs = [][2]string{
	{"OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"},
	{"OVMF_CODE.fd", "OVMF_VARS.fd"},
}

// FindOVMF returns the OVMF code and vars template in OVMFDir, as a pair
// of one build. The vars file is a template: attach a copy (CopyVars).
func FindOVMF() (code, vars string, err error) {
	for _, p := range ovmfPairs {
		code, vars = filepath.Join(OVMFDir, p[0]), filepath.Join(OVMFDir, p[1])
		if regular(code) && regular(vars) {
			if err := sameFlashFamily(code, vars); err != nil {
				return "", "", err
			}
			return code, vars, nil
		}
	}
	return "", "", fmt.Errorf("no OVMF firmware in %s (looked for %s/%s and %s/%s): install the ovmf package or set efi_firmware_code and efi_firmware_vars",
		OVMFDir, ovmfPairs[0][0], ovmfPairs[0][1], ovmfPairs[1][0], ovmfPairs[1][1])
}

// AAVMFDir is where Debian's qemu-efi-aarch64 package installs edk2 for
// QEMU's virt board.
const AAVMFDir = "/usr/share/AAVMF"

// FindAAVMF returns the AAVMF code and vars template in AAVMFDir: both are
// 64 MiB, the size of each of the virt board's two flash devices.
func FindAAVMF() (code, vars string, err error) {
	code, vars = filepath.Join(AAVMFDir, "AAVMF_CODE.fd"), filepath.Join(AAVMFDir, "AAVMF_VARS.fd")
	if !regular(code) || !regular(vars) {
		return "", "", fmt.Errorf("no AAVMF firmware in %s (looked for AAVMF_CODE.fd and AAVMF_VARS.fd): install the qemu-efi-aarch64 package or set efi_firmware_code and efi_firmware_vars", AAVMFDir)
	}
	if err := sameFlashFamily(code, vars); err != nil {
		return "", "", err
	}
	return code, vars, nil
}

func regular(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// CopyVars copies an OVMF vars template to dst (created or truncated, mode
// 0644 since it becomes part of the artifact) and syncs it. On error dst is
// removed.
func CopyVars(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return &FileError{What: "OVMF vars", Key: "efi_firmware_vars", Path: src, Err: err}
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return &FileError{What: "OVMF vars", Key: "efi_firmware_vars", Path: src, Err: err}
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return &FileError{What: "OVMF vars", Key: "efi_firmware_vars", Path: src,
			Err: errors.New("not a non-empty regular file")}
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("copying OVMF vars: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("copying OVMF vars: %w", cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("copying OVMF vars %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("copying OVMF vars: %w", err)
	}
	return nil
}
