package ext4

import (
	"errors"
	"fmt"
	"strings"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/ext4spec"
)

// SetRoot sets the mode, owner and time of "/". It must come first.
func (w *Writer) SetRoot(h Header) error {
	if err := w.usable(); err != nil {
		return err
	}
	if w.started {
		return errors.New("ext4: SetRoot after entries were added")
	}
	w.stack[0].hdr = Header{Mode: h.Mode, Uid: h.Uid, Gid: h.Gid, Mtime: h.Mtime}
	return nil
}

// enter validates name and makes its parent the innermost open directory,
// finishing every directory whose subtree has ended.
func (w *Writer) enter(name string) (*openDir, string, error) {
	return w.enterAny(name, false)
}

func (w *Writer) enterAny(name string, lpf bool) (*openDir, string, error) {
	if err := w.usable(); err != nil {
		return nil, "", err
	}
	if name == "lost+found" && !lpf {
		return nil, "", fmt.Errorf("ext4: %q is reserved for the preallocated lost+found directory", name)
	}
	if w.cur != nil {
		if w.cur.written != w.cur.hdr.Size {
			return nil, "", w.fail(fmt.Errorf("%w: %q has %d of %d bytes", ErrWriteTooShort, w.cur.hdr.Name, w.cur.written, w.cur.hdr.Size))
		}
		w.cur = nil
	}
	i, base, err := findParent(name, len(w.stack), func(i int) string { return w.stack[i].path })
	if err != nil {
		return nil, "", err
	}
	d := w.stack[i]
	if err := d.checkNew(base, name); err != nil {
		return nil, "", err
	}
	for len(w.stack) > i+1 {
		top := w.stack[len(w.stack)-1]
		w.stack = w.stack[:len(w.stack)-1]
		if err := w.finishDir(top); err != nil {
			return nil, "", w.fail(err)
		}
	}
	w.started = true
	return d, base, nil
}

func validName(name string) error {
	if name == "" {
		return errors.New("ext4: empty name (use SetRoot for the root)")
	}
	for _, c := range strings.Split(name, "/") {
		switch {
		case c == "" || c == "." || c == "..":
			return fmt.Errorf("ext4: invalid name %q (no leading/trailing or double slash, no . or ..)", name)
		case len(c) > 255:
			return fmt.Errorf("ext4: %q: component longer than 255 bytes", name)
		case strings.IndexByte(c, 0) >= 0:
			return fmt.Errorf("ext4: %q contains NUL", name)
		}
	}
	return nil
}

// Mkdir adds a directory. Its entries must follow before anything outside it.
func (w *Writer) Mkdir(h Header) error {
	if h.Name == "lost+found" {
		return w.setLostFound(h)
	}
	parent, base, err := w.enter(h.Name)
	if err != nil {
		return err
	}
	ino, err := w.allocIno()
	if err != nil {
		return err
	}
	parent.add(base, ino, ftDir)
	parent.subdirs++
	w.dirs[(ino-1)/w.g.ipg]++
	w.stack = append(w.stack, &openDir{path: h.Name, ino: ino, parent: parent.ino, hdr: h, sorted: true})
	w.stats.Dirs++
	return nil
}

// setLostFound lets a caller (e.g. one copying an existing image) set the
// attributes of the preallocated /lost+found; it cannot hold entries.
func (w *Writer) setLostFound(h Header) error {
	root, _, err := w.enterAny(h.Name, true)
	if err != nil {
		return err
	}
	if root.lpfSet {
		return fmt.Errorf("ext4: duplicate entry %q", h.Name)
	}
	root.lpfSet = true
	return w.rewriteLostFound(h)
}

// Symlink adds a symbolic link: inline ("fast") below 60 bytes, else one
// data block.
func (w *Writer) Symlink(h Header, target string) error {
	if len(target) == 0 || len(target) >= ext4spec.BlockSize {
		return fmt.Errorf("ext4: %q: symlink target length %d not in 1..4095", h.Name, len(target))
	}
	parent, base, err := w.enter(h.Name)
	if err != nil {
		return err
	}
	ino, err := w.allocIno()
	if err != nil {
		return err
	}
	perm := unixMode(h.Mode)
	if h.Mode.Perm() == 0 {
		perm |= 0o777
	}
	in := &inodeInfo{mode: ext4spec.ModeSymlink | perm, uid: h.Uid, gid: h.Gid, size: uint64(len(target)), links: 1, time: h.Mtime}
	if len(target) < 60 {
		copy(in.iblock[:], target)
		encodeInode(w.ibuf[:], w.fsSeed, ino, in)
		err = w.writeInodeBytes(ino, w.ibuf[:])
	} else {
		clear(w.blk)
		copy(w.blk, target)
		var exts []ext4spec.Extent
		if err = w.writeBlocks(&exts, 0, w.blk, 1); err == nil {
			in.flags = ext4spec.FlagExtents
			err = w.finishInode(ino, exts, in, 1)
		}
	}
	if err != nil {
		return w.fail(err)
	}
	parent.add(base, ino, ftSymlink)
	w.stats.Symlinks++
	return nil
}

// Link adds a hard link to an inode written earlier (a completed regular
// file or a symlink), incrementing its link count.
func (w *Writer) Link(name string, ino uint32) error {
	if err := w.usable(); err != nil {
		return err
	}
	if ino <= firstIno || ino >= w.nextIno {
		return fmt.Errorf("ext4: link %q: inode %d was not made by this writer", name, ino)
	}
	if w.cur != nil && w.cur.ino == ino && w.cur.written != w.cur.hdr.Size {
		return fmt.Errorf("ext4: link %q: file %q is not complete", name, w.cur.hdr.Name)
	}
	parent, base, err := w.enter(name)
	if err != nil {
		return err
	}
	b := w.ibuf[:]
	if err := w.readInodeBytes(ino, b); err != nil {
		return w.fail(err)
	}
	var ft uint8
	switch getU16(b) & ext4spec.ModeTypeMask {
	case ext4spec.ModeRegular:
		ft = ftReg
	case ext4spec.ModeSymlink:
		ft = ftSymlink
	default:
		return fmt.Errorf("ext4: link %q: inode %d is not a regular file or symlink", name, ino)
	}
	links := getU16(b[0x1A:])
	if links >= linkMax {
		return fmt.Errorf("ext4: link %q: inode %d has too many links", name, ino)
	}
	putU16(b[0x1A:], links+1)
	ext4spec.SetInodeChecksum(b, w.fsSeed, ino)
	if err := w.writeInodeBytes(ino, b); err != nil {
		return w.fail(err)
	}
	parent.add(base, ino, ft)
	w.stats.HardLinks++
	return nil
}

// findParent splits name and finds its parent among the open directories,
// given by depth and the path at each level: in depth-first order the parent
// of a new entry is always still open.
func findParent(name string, depth int, pathAt func(int) string) (int, string, error) {
	if err := validName(name); err != nil {
		return 0, "", err
	}
	parent, base := "", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		parent, base = name[:i], name[i+1:]
	}
	i := depth - 1
	for i >= 0 && pathAt(i) != parent {
		i--
	}
	if i < 0 {
		return 0, "", fmt.Errorf("ext4: %q: parent directory %q does not exist or is already complete (entries must come parent first, depth first)", name, parent)
	}
	return i, base, nil
}
