// Package unixmode converts Go's fs.FileMode to the st_mode bits that
// on-disk formats (ext4 inodes, cpio headers) store.
package unixmode

import "io/fs"

// Perm returns the permission bits plus setuid, setgid and sticky as st_mode
// has them (Go keeps the special bits elsewhere in fs.FileMode).
func Perm(m fs.FileMode) uint32 {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return v
}

// FileMode is the inverse of Perm: st_mode permission and special bits as
// an fs.FileMode.
func FileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}
