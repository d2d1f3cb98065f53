package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/cloudimg/ova"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/diskout"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/normalize"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// convertRow is one output format: how long qemu-img takes to write it and
// how long our reproducibility work on top takes (the content seed, a read
// of the image's data, and the header rewrite).
type convertRow struct {
	format      string
	qemu, ours  row
	outputBytes int64
}

// benchConvert times the post-processing of one raw image (ours, of the
// fixture's closure): every nixos-convert format, and nixos-reproducible on
// the raw image.
func benchConvert(ctx context.Context, c config, fixture string) ([]*convertRow, row, int64, error) {
	srcs, err := closure(fixture)
	if err != nil {
		return nil, row{}, 0, err
	}
	dir := filepath.Join(c.tmp, "convert")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, row{}, 0, err
	}
	raw := filepath.Join(dir, "nixos.img")
	if err := writeOurs(ctx, raw, srcs, 0); err != nil {
		return nil, row{}, 0, err
	}
	fi, err := os.Stat(raw)
	if err != nil {
		return nil, row{}, 0, err
	}
	var rows []*convertRow
	for _, name := range []string{"qcow2", "qcow2-compressed", "vdi", "vpc", "vhdx", "vmdk", "vmdk-stream", "azure", "gce", "ova"} {
		spec, _ := qemuimg.Parse(name, "")
		r := &convertRow{format: name}
		for i := 0; i < c.runs; i++ {
			out := filepath.Join(dir, "out."+spec.Ext)
			os.Remove(out)
			// What nixos-convert runs: qemu-img (timed apart), then the
			// content seed and the header rewrite (vdi, vpc, vhdx, vmdk)
			// and for a cloud its form (a footer, a tar.gz, an OVA).
			d := &timedDriver{Driver: qemuimg.ExecDriver{}}
			start := time.Now()
			err := diskout.Write(ctx, diskout.Job{
				Driver: d, Spec: spec, Src: raw, SrcFormat: "raw", Final: out,
				Deterministic: true, Time: epoch,
				Seed:    func() ([]byte, error) { return normalize.ContentSeed(raw, []byte("bench")) },
				Machine: ova.Machine{Name: "nixos", CPUs: diskout.DefaultOVACPUs, MemoryMiB: diskout.DefaultOVAMemory, Firmware: "bios"},
			})
			if err != nil {
				return nil, row{}, 0, err
			}
			r.qemu.times = append(r.qemu.times, d.took)
			r.ours.times = append(r.ours.times, time.Since(start)-d.took)
			if st, err := os.Stat(out); err == nil {
				r.outputBytes = allocatedBytes(st)
			}
			os.Remove(out)
		}
		rows = append(rows, r)
	}
	// nixos-reproducible over a copy, each run on a fresh one.
	var norm row
	for i := 0; i < c.runs; i++ {
		cp := filepath.Join(dir, "copy.img")
		if err := copySparse(raw, cp); err != nil {
			return nil, row{}, 0, err
		}
		start := time.Now()
		if _, err := normalize.Image(context.Background(), cp, normalize.Options{Seed: []byte("bench"), Time: epoch}); err != nil {
			return nil, row{}, 0, err
		}
		norm.times = append(norm.times, time.Since(start))
	}
	return rows, norm, fi.Size(), nil
}

// timedDriver times qemu-img's part of a conversion.
type timedDriver struct {
	qemuimg.Driver
	took time.Duration
}

func (d *timedDriver) Convert(ctx context.Context, s qemuimg.Spec, src, srcFormat, dst string, progress func(float64)) error {
	start := time.Now()
	err := d.Driver.Convert(ctx, s, src, srcFormat, dst, progress)
	d.took += time.Since(start)
	return err
}

func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	_, err = io.Copy(out, in) // Linux copy_file_range keeps holes on the same filesystem
	return err
}

func printConvertTable(w io.Writer, fixture string, size int64, rows []*convertRow, norm row) {
	fmt.Fprintf(w, "## Post-processing: %s image (%s raw)\n\n", fixture, human(size))
	fmt.Fprintf(w, "| format | qemu-img convert | + ours (ids normalised; a cloud's form) | overhead | output on disk |\n|---|--:|--:|--:|--:|\n")
	for _, r := range rows {
		q, o := r.qemu.median(), r.ours.median()
		fmt.Fprintf(w, "| %s | %s | %s | %.0f %% | %s |\n", r.format, dur(q), dur(o), 100*float64(o)/float64(q), human(r.outputBytes))
	}
	fmt.Fprintf(w, "\nnixos-reproducible on the raw image (ext4 normalised in place): %s\n\n", dur(norm.median()))
}

func allocatedBytes(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
