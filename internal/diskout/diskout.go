// Package diskout writes a disk image in the format a user named: qemu-img
// makes the container, the container's invented ids are normalised, and for
// a cloud the result is made into what its import takes (a fixed VHD for
// Azure, a sparse tar.gz for GCE, an OVA). The builder's `format` and the
// nixos-convert post-processor share it.
//
// Only a complete image ever carries the final name: everything is made in
// a staging directory beside it, under the final base name (vmdk records
// its own file name inside), and renamed at the end.
package diskout

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/gcetar"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/ova"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/vhd"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// GCEAlign is the unit Compute Engine wants a disk.raw's size in ("an
// increment of 1 GB", which its importer means as GiB).
const GCEAlign = 1 << 30

// Job is one image to write.
type Job struct {
	Driver    qemuimg.Driver
	Spec      qemuimg.Spec
	Src       string // the input image
	SrcFormat string // qemu-img's name for it
	Final     string // the file to make

	// Deterministic: ids from Seed, time stamps from Time. Otherwise the
	// ids are random and the time now, as qemu-img makes them.
	Deterministic bool
	// Seed returns the seed of the container's ids; called only when a
	// format has ids (it may cost a read of the image).
	Seed func() ([]byte, error)
	// Time (Unix seconds) for time stamps and archive members.
	Time int64
	// Machine describes the appliance of an OVA.
	Machine ova.Machine

	// Progress, when not nil, gets the percentage done.
	Progress func(pct float64)
	// Say, when not nil, gets what was normalised, for the user.
	Say func(string)
}

// Write makes j.Final. Nothing is left behind on error.
func Write(ctx context.Context, j Job) error {
	stage := filepath.Join(filepath.Dir(j.Final), "."+filepath.Base(j.Final)+".partial")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return fmt.Errorf("staging the conversion: %w", err)
	}
	defer os.RemoveAll(stage)
	staged := filepath.Join(stage, filepath.Base(j.Final))

	// qemu-img's output: the final file itself, or the disk an archive
	// will hold.
	disk := staged
	switch j.Spec.Cloud {
	case "gce":
		disk = filepath.Join(stage, "disk.raw")
	case "ova":
		disk = filepath.Join(stage, j.Machine.Name+"-disk1.vmdk")
	}
	// An archive copies the disk once more: qemu-img's half, then ours.
	share := 100.0
	if disk != staged {
		share = 50
	}
	if err := j.Driver.Convert(ctx, j.Spec, j.Src, j.SrcFormat, disk, scaled(j.Progress, 0, share)); err != nil {
		return err
	}

	stamp := j.Time
	if !j.Deterministic {
		stamp = time.Now().Unix()
	}
	switch j.Spec.Cloud {
	case "azure":
		// A version 4 UUID, as qemu-img's; when deterministic, the
		// normaliser replaces it (it keeps a nil one as it is).
		var id [16]byte
		rand.Read(id[:])
		id[6], id[8] = id[6]&0x0f|0x40, id[8]&0x3f|0x80
		if _, err := vhd.Finish(disk, id, stamp); err != nil {
			return fmt.Errorf("azure: %w", err)
		}
	case "gce":
		if err := padTo(disk, GCEAlign); err != nil {
			return fmt.Errorf("gce: %w", err)
		}
	}
	if j.Deterministic && j.Spec.IDs {
		seed, err := j.Seed()
		if err != nil {
			return err
		}
		lines, err := normalize.Container(disk, normalize.Options{Seed: seed, Time: j.Time})
		if err != nil {
			return err
		}
		if j.Say != nil {
			for _, l := range lines {
				j.Say(l)
			}
		}
	}
	if disk != staged {
		if err := archive(ctx, j, disk, staged, stamp, scaled(j.Progress, share, 100-share)); err != nil {
			return err
		}
		os.Remove(disk)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return os.Rename(staged, j.Final)
}

// archive writes the gce or ova archive of disk to staged; progress is
// never nil (scaled makes it).
func archive(ctx context.Context, j Job, disk, staged string, stamp int64, progress func(float64)) (err error) {
	in, err := os.Open(disk)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(staged, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	total := fi.Size()
	// Each progress report also ends the writer once ctx is done: closing
	// its source makes its next read fail.
	step := func(n int64) {
		if total > 0 {
			progress(100 * float64(n) / float64(total))
		}
		if ctx.Err() != nil {
			in.Close()
		}
	}
	switch j.Spec.Cloud {
	case "gce":
		return gcetar.Write(out, in, "disk.raw", total, stamp, step)
	case "ova":
		info, err := j.Driver.Info(ctx, disk, "vmdk")
		if err != nil {
			return err
		}
		return ova.Write(out, j.Machine, in, info.VirtualSize, stamp, step)
	}
	return fmt.Errorf("no archive for %q", j.Spec.Cloud)
}

// padTo grows the file at path, sparsely, to a multiple of align bytes.
func padTo(path string, align int64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	n := (fi.Size() + align - 1) / align * align
	if n == 0 {
		return errors.New("the image is empty")
	}
	return os.Truncate(path, n)
}

// scaled maps a 0–100 progress into [from, from+span] of the whole.
func scaled(p func(float64), from, span float64) func(float64) {
	if p == nil {
		return func(float64) {}
	}
	return func(pct float64) { p(from + pct*span/100) }
}
