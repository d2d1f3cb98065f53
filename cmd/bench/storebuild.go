package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// imageFile is the builder's raw image in its output directory (image_name
// and format left at their defaults).
const imageFile = "nixos.img"

// pluginSetup builds and installs the plugin once per bench run, for every
// section that runs `packer build`.
type pluginSetup struct {
	once sync.Once
	env  []string
	err  error
}

// packerEnv is the environment of every timed `packer build`: the plugin
// from this tree in a private PACKER_PLUGIN_PATH, so the user's own
// installation is neither used nor replaced.
func (c config) packerEnv() ([]string, error) {
	c.plugin.once.Do(func() {
		dir := filepath.Join(c.tmp, "plugin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			c.plugin.err = err
			return
		}
		c.plugin.env, c.plugin.err = installPlugin(c.packer, dir)
		if c.plugin.err != nil {
			c.plugin.err = fmt.Errorf("%s", strings.ReplaceAll(c.plugin.err.Error(), c.tmp, "$TMP"))
		}
	})
	return c.plugin.env, c.plugin.err
}

// storeSource is one store-only source block: the closure of roots as a
// raw image with the given layout, additional_space extra bytes.
func storeSource(name string, roots []string, layout string, extra int64, out string) string {
	q := make([]string, len(roots))
	for i, r := range roots {
		q[i] = fmt.Sprintf("%q", r)
	}
	return fmt.Sprintf(`source "nixos-image" %q {
  only_nix_store       = true
  store_paths          = [%s]
  partition_table_type = %q
  format               = "raw"
  additional_space     = "%dK"
  output_directory     = %q
}
`, name, strings.Join(q, ", "), layout, (extra+1023)/1024, out)
}

// buildBlock runs every named nixos-image source.
func buildBlock(names ...string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", "source.nixos-image."+n)
	}
	return fmt.Sprintf("build {\n  sources = [%s]\n}\n", strings.Join(q, ", "))
}

// storeBuild is a single-source store-only build of roots, layout none: what
// the table's "ours" rows time.
type storeBuild struct {
	c     config
	env   []string
	tmpl  string
	out   string // output_directory
	roots []string
}

// newStoreBuild writes the template into dir; keys are more lines of the
// source block (the binary-cache section's substituters).
func newStoreBuild(c config, dir string, roots []string, extra int64, keys ...string) (*storeBuild, error) {
	env, err := c.packerEnv()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b := &storeBuild{c: c, env: env, tmpl: filepath.Join(dir, "store.pkr.hcl"), out: filepath.Join(dir, "packer-out"), roots: roots}
	src := storeSource("bench", roots, "none", extra, b.out)
	if len(keys) > 0 {
		src = strings.Replace(src, "\n}\n", "\n"+strings.Join(keys, "\n")+"\n}\n", 1)
	}
	tmpl := src + "\n" + buildBlock("bench")
	return b, os.WriteFile(b.tmpl, []byte(tmpl), 0o644)
}

// contender times `packer build` in one UI mode, from its start to the
// image's fsync; the image is then moved (untimed) to where measure looks.
func (b *storeBuild) contender(ui uiMode) contender {
	return contender{key: "packer", name: "ours: `packer build`, " + ui.label(), image: true,
		run: func(ctx context.Context, image string) (time.Duration, int64, []byte, error) {
			res, err := b.build(ctx, ui)
			if err == nil {
				err = os.Rename(filepath.Join(b.out, imageFile), image)
			}
			removeAll(b.out)
			return res.elapsed, res.pluginRSS, res.out, err
		}}
}

func (b *storeBuild) build(ctx context.Context, ui uiMode) (packerResult, error) {
	removeAll(b.out)
	return runPacker(ctx, packerRun{packer: b.c.packer, env: b.env, dir: filepath.Dir(b.tmpl), args: []string{b.tmpl},
		ui: ui, images: []string{filepath.Join(b.out, imageFile)}, limit: b.c.timeout})
}
