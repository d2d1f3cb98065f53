package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
)

// writeDiskfs copies the tree with go-diskfs's ext4 writer, as a user of
// that library would: path-based Mkdir/OpenFile/Symlink/Chmod per entry.
// It cannot make hard links (Link is not implemented), so linked files are
// written once per name.
func writeDiskfs(image string, size int64, inodes uint32, srcs []string) error {
	f, err := createImage(image, size)
	if err != nil {
		return err
	}
	defer f.Close()
	u := fsUUID
	efs, err := ext4.Create(file.New(f, false), size, 0, 512, &ext4.Params{
		UUID:            &u,
		SectorsPerBlock: 8, // 4 KiB blocks, like ours and mke2fs
		InodeCount:      inodes,
		VolumeName:      "nixos",
	})
	if err != nil {
		return fmt.Errorf("creating the filesystem: %w", err)
	}
	buf := make([]byte, 1<<20)
	for _, src := range srcs {
		base := filepath.Base(src)
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(src, p)
			if err != nil {
				return err
			}
			name := path.Join(base, filepath.ToSlash(rel))
			if err := diskfsAdd(efs, p, name, buf); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := efs.Close(); err != nil {
		return err
	}
	return f.Sync()
}

func diskfsAdd(efs *ext4.FileSystem, p, name string, buf []byte) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		if err := efs.Mkdir(name); err != nil {
			return err
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		return efs.Symlink(target, name)
	case fi.Mode().IsRegular():
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := efs.OpenFile(name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return err
		}
		// Our 1 MiB buffer on both sides (the wrappers hide ReadFrom/WriteTo):
		// each Write costs go-diskfs an inode and extent update.
		if _, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf); err != nil {
			return err
		}
		if err := dst.Close(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unsupported file type %s", fi.Mode().Type())
	}
	return efs.Chmod(name, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
}
