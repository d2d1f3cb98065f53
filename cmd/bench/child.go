package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/hosttree"
)

// childCmd is the hidden subcommand the bench re-executes itself with:
//
//	bench __child KIND [-image F -size N -inodes N -extra N] -- STOREPATH...
//
// KIND is plan (print ours' size and inode count), ours, go-diskfs or read.
const childCmd = "__child"

func childMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "bench child: missing kind")
		return 2
	}
	kind := args[0]
	fl := flag.NewFlagSet(childCmd+" "+kind, flag.ContinueOnError)
	image := fl.String("image", "", "image file to write")
	size := fl.Int64("size", 0, "filesystem size in bytes")
	inodes := fl.Uint("inodes", 0, "inode count")
	extra := fl.Int64("extra", 0, "free bytes ours plans for")
	cfrMin := fl.Int64("cfr-min", ext4.CopyFileRangeMin, "ours: copy_file_range for files of this size and more")
	readAhead := fl.Bool("readahead", hosttree.ReadAhead, "ours: the writing walk's read-ahead")
	if err := fl.Parse(args[1:]); err != nil {
		return 2
	}
	srcs := fl.Args()
	ctx := context.Background()
	var err error
	switch kind {
	case "plan":
		var sz int64
		var n uint32
		if sz, n, err = planPeers(ctx, srcs, *extra); err == nil {
			fmt.Println(sz, n)
		}
	case "ours":
		ext4.CopyFileRangeMin = *cfrMin
		hosttree.ReadAhead = *readAhead
		err = writeOurs(ctx, *image, srcs, *extra)
	case "go-diskfs":
		err = writeDiskfs(*image, *size, uint32(*inodes), srcs)
	case "read":
		_, err = readTree(srcs)
	default:
		err = fmt.Errorf("unknown kind %q", kind)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", kind, err)
		return 1
	}
	return 0
}

type treeStats struct{ entries, bytes int64 }

// readTree is the floor: the walk and lstat every writer does, plus reading
// every file's bytes once.
func readTree(srcs []string) (treeStats, error) {
	var st treeStats
	buf := make([]byte, 1<<20)
	for _, src := range srcs {
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			st.entries++
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				_, err = os.Readlink(p)
				return err
			case !fi.Mode().IsRegular():
				return nil
			}
			st.bytes += fi.Size()
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			// A plain read loop: io.Discard's ReadFrom would read in 8 KiB bites.
			for {
				_, err := f.Read(buf)
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
			}
		})
		if err != nil {
			return st, err
		}
	}
	return st, nil
}

// createImage makes a fresh sparse image file of the given size.
func createImage(name string, size int64) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
