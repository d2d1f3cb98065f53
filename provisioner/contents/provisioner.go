package contents

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2/hcldec"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/stageops"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/packerx/uiprogress"
)

// Provisioner is nixos-contents.
type Provisioner struct {
	config Config
}

var _ packersdk.Provisioner = (*Provisioner)(nil)

// progressThreshold: sources with at least this many bytes get a progress
// bar.
const progressThreshold = 32 << 20

func (p *Provisioner) ConfigSpec() hcldec.ObjectSpec { return p.config.FlatMapstructure().HCL2Spec() }

func (p *Provisioner) Prepare(raws ...interface{}) error { return p.config.Prepare(raws...) }

// Provision copies every content into the image through comm: into the
// installed system, or in a store-only nixos-image build (which says so in
// its generated data) into the store filesystem's root.
func (p *Provisioner) Provision(ctx context.Context, ui packersdk.Ui, comm packersdk.Communicator, generated map[string]interface{}) error {
	r := &run{ctx: ctx, ui: ui, comm: comm, store: generated[stageops.GeneratedKey] == stageops.StoreOnly}
	if r.store {
		if err := p.checkStoreOnly(); err != nil {
			return err
		}
	}
	if p.config.ConfigFile != "" {
		ui.Say(fmt.Sprintf("Installing %s as %s", p.config.ConfigFile, ConfigFileTarget))
		ct := &Content{Source: p.config.ConfigFile, Target: ConfigFileTarget, mode: 0o644, hasMode: true,
			matches: []string{p.config.ConfigFile}, name: "config_file"}
		if err := r.content(ct); err != nil {
			return fmt.Errorf("config_file: %w", err)
		}
	}
	for i := range p.config.Contents {
		ct := &p.config.Contents[i]
		if ct.Inline != nil {
			ui.Say(fmt.Sprintf("Writing %s (inline, %d bytes)", ct.Target, len(*ct.Inline)))
		} else {
			ui.Say(fmt.Sprintf("Copying %s to %s", ct.Source, ct.Target))
		}
		if err := r.content(ct); err != nil {
			return fmt.Errorf("%s: %w", ct.name, err)
		}
	}
	return nil
}

// checkStoreOnly refuses, before anything is written, what a store-only
// image cannot have.
func (p *Provisioner) checkStoreOnly() error {
	if p.config.ConfigFile != "" {
		return fmt.Errorf("config_file: a store-only image (only_nix_store = true) has no /etc/nixos, as make-disk-image forbids configFile with onlyNixStore; use install mode")
	}
	for _, ct := range p.config.Contents {
		for _, v := range []struct{ key, val string }{{"user", ct.User}, {"group", ct.Group}} {
			if v.val == "" {
				continue
			}
			if _, err := strconv.ParseUint(v.val, 10, 32); err != nil {
				return fmt.Errorf("%s: %s %q: a store-only image (only_nix_store = true) has no /etc/passwd or /etc/group to look names up in; give a numeric id", ct.name, v.key, v.val)
			}
		}
	}
	return nil
}

// run is one Provision call.
type run struct {
	ctx  context.Context
	ui   packersdk.Ui
	comm packersdk.Communicator
	// store: the communicator stages a store-only image; directories,
	// modes and owners go as stageops operations instead of commands.
	store bool
	// The image's /etc/passwd and /etc/group, read once when needed.
	passwd, group map[string]string
}

// errNoCommands is what a communicator that cannot run commands leads to.
func errNoCommands(what string, err error) error {
	return fmt.Errorf("running %s in the image: %v: nixos-contents needs a communicator that runs commands (install mode), or a store-only nixos-image build, for user/group, directories and its symlink check", what, err)
}

// sh runs command in the image; its output goes to the UI only when it fails.
func (r *run) sh(command string) (string, error) {
	var out, errb bytes.Buffer
	cmd := &packersdk.RemoteCmd{Command: command, Stdout: &out, Stderr: &errb}
	if err := r.comm.Start(r.ctx, cmd); err != nil {
		return "", errNoCommands(fmt.Sprintf("%q", command), err)
	}
	done := make(chan int, 1)
	go func() { done <- cmd.Wait() }()
	var status int
	select {
	case status = <-done:
	case <-r.ctx.Done():
		return "", r.ctx.Err()
	}
	if status != 0 {
		return out.String(), fmt.Errorf("%q exited with status %d: %s", command, status, strings.TrimSpace(errb.String()+out.String()))
	}
	return out.String(), nil
}

// shUI runs command with its output streamed to the UI.
func (r *run) shUI(command string) error {
	cmd := &packersdk.RemoteCmd{Command: command}
	if err := cmd.RunWithUi(r.ctx, r.comm, r.ui); err != nil {
		return errNoCommands(fmt.Sprintf("%q", command), err)
	}
	if s := cmd.ExitStatus(); s != 0 {
		return fmt.Errorf("%q exited with status %d", command, s)
	}
	return nil
}

// item is one thing to write: a match of the source and its target.
type item struct {
	src    string // "" for inline
	target string
	fi     os.FileInfo
}

func (r *run) content(ct *Content) error {
	var items []item
	if ct.Inline != nil {
		items = []item{{target: path.Clean(ct.Target)}}
	} else {
		for _, m := range ct.matches {
			fi, err := os.Stat(m)
			if err != nil {
				return err
			}
			t := path.Clean(ct.Target)
			if ct.intoDir {
				t = path.Join(ct.Target, filepath.Base(m))
			}
			items = append(items, item{src: m, target: t, fi: fi})
		}
	}

	// Every directory that receives a file must not resolve into the store.
	var dirs []string
	for _, it := range items {
		if it.fi != nil && it.fi.IsDir() {
			dirs = append(dirs, it.target)
		} else {
			dirs = append(dirs, path.Dir(it.target))
		}
	}
	if err := r.checkDirs(dirs); err != nil {
		return err
	}

	var uid, gid string
	if ct.User != "" {
		var err error
		if uid, err = r.lookup("/etc/passwd", &r.passwd, ct.User); err != nil {
			return fmt.Errorf("user: %w", err)
		}
		if gid, err = r.lookup("/etc/group", &r.group, ct.Group); err != nil {
			return fmt.Errorf("group: %w", err)
		}
	}

	for _, it := range items {
		switch {
		case it.src == "":
			data := []byte(*ct.Inline)
			mode := os.FileMode(0o644)
			if ct.hasMode {
				mode = ct.mode
			}
			fi := fileInfo{name: path.Base(it.target), size: int64(len(data)), mode: mode}
			if err := r.upload(it.target, io.NopCloser(bytes.NewReader(data)), fi); err != nil {
				return err
			}
		case it.fi.IsDir():
			if err := r.dir(ct, it.src, it.target); err != nil {
				return err
			}
		default:
			if err := r.file(ct, it.src, it.target, it.fi, nil); err != nil {
				return err
			}
		}
		if uid != "" {
			if err := r.chown(it.target, uid, gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkDirs refuses directories whose existing part resolves into the Nix
// store: a symlink there would have the write land in a store path.
func (r *run) checkDirs(dirs []string) error {
	if r.store {
		// No system links into a store-only image's store; the staging
		// area refuses writes through links it holds, and the build
		// refuses uploads that clash with a store path.
		return nil
	}
	var script strings.Builder
	for _, d := range dirs {
		// The deepest existing ancestor, resolved (busybox's readlink has no -m).
		fmt.Fprintf(&script, "d=%s; while [ ! -e \"$d\" ] && [ ! -L \"$d\" ] && [ \"$d\" != / ]; do d=$(dirname \"$d\"); done; echo \"$(readlink -f \"$d\")\"\n", shellQuote(d))
	}
	out, err := r.sh(script.String())
	if err != nil {
		return fmt.Errorf("checking the targets' directories for symbolic links: %w", err)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != len(dirs) {
		return fmt.Errorf("checking the targets' directories for symbolic links: got %d lines for %d directories: %q", len(lines), len(dirs), out)
	}
	for i, res := range lines {
		if res == "" {
			return fmt.Errorf("%s: cannot resolve it in the image (a dangling symbolic link?)", dirs[i])
		}
		if underStore(res) {
			return fmt.Errorf("%s resolves to %s in the image, inside the read-only Nix store (a symbolic link); refusing to write there", dirs[i], res)
		}
	}
	return nil
}

// lookup resolves a user or group name against the image's own file; a
// number is taken as it is.
func (r *run) lookup(file string, cache *map[string]string, name string) (string, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		return name, nil
	}
	if *cache == nil {
		var buf bytes.Buffer
		if err := r.comm.Download(file, &buf); err != nil {
			return "", fmt.Errorf("looking up %q: reading %s from the image: %v", name, file, err)
		}
		m := map[string]string{}
		sc := bufio.NewScanner(&buf)
		for sc.Scan() {
			f := strings.Split(sc.Text(), ":")
			if len(f) >= 3 && f[0] != "" {
				if _, ok := m[f[0]]; !ok {
					m[f[0]] = f[2]
				}
			}
		}
		*cache = m
	}
	id, ok := (*cache)[name]
	if !ok {
		return "", fmt.Errorf("%q is not in the image's %s", name, file)
	}
	return id, nil
}

func (r *run) file(ct *Content, src, target string, fi os.FileInfo, prog *uiprogress.Bar) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	mode := fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if ct.hasMode {
		mode = ct.mode
	}
	var rc io.ReadCloser = f
	if prog != nil {
		rc = prog.Reader(f)
	} else if fi.Size() >= progressThreshold {
		rc = r.ui.TrackProgress(filepath.Base(src), 0, fi.Size(), f)
		defer rc.Close()
	}
	return r.upload(target, rc, fileInfo{name: fi.Name(), size: fi.Size(), mode: mode})
}

func (r *run) upload(target string, rd io.Reader, fi fileInfo) error {
	var ofi os.FileInfo = fi
	if err := r.comm.Upload(target, rd, &ofi); err != nil {
		return fmt.Errorf("uploading %s: %w", target, err)
	}
	return nil
}

// dir copies a directory's contents into target, recursively.
func (r *run) dir(ct *Content, src, target string) error {
	type entry struct {
		rel string
		fi  os.FileInfo
	}
	var files, dirs []entry
	var total int64
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			dirs = append(dirs, entry{rel, fi})
		case fi.Mode().IsRegular():
			files = append(files, entry{rel, fi})
			total += fi.Size()
		case fi.Mode()&os.ModeSymlink != 0:
			// Follow it, as make-disk-image's contents does for its sources.
			st, err := os.Stat(p)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if !st.Mode().IsRegular() {
				return fmt.Errorf("%s: a symbolic link to a %s; want links to regular files only", p, kind(st))
			}
			files = append(files, entry{rel, st})
			total += st.Size()
		default:
			return fmt.Errorf("%s is a %s; want regular files and directories only", p, kind(fi))
		}
		return nil
	})
	if err != nil {
		return err
	}

	// Every directory is made first; their modes are set after the files
	// are in, deepest first, so a mode without x bits cannot get in the way.
	made := make([]string, len(dirs))
	for i, d := range dirs {
		made[i] = path.Join(target, filepath.ToSlash(d.rel))
	}
	if err := r.mkdirs(made); err != nil {
		return err
	}

	var prog *uiprogress.Bar
	if total >= progressThreshold {
		prog = uiprogress.New(r.ui, src, total)
		defer prog.Close()
	}
	for _, f := range files {
		if err := r.file(ct, filepath.Join(src, f.rel), path.Join(target, filepath.ToSlash(f.rel)), f.fi, prog); err != nil {
			return err
		}
	}

	var modes []pathMode
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		mode := d.fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		if ct.hasMode {
			mode = ct.mode
		}
		modes = append(modes, pathMode{made[i], mode})
	}
	return r.chmods(modes)
}

type pathMode struct {
	path string
	mode os.FileMode
}

// mkdirs makes directories (with parents) in the image.
func (r *run) mkdirs(dirs []string) error {
	if r.store {
		ops := make([]stageops.Op, len(dirs))
		for i, d := range dirs {
			ops[i] = stageops.Op{Path: d, Mkdir: true}
		}
		return r.meta(ops)
	}
	var script strings.Builder
	for _, d := range dirs {
		fmt.Fprintf(&script, "mkdir -p %s\n", shellQuote(d))
	}
	return r.shUI(script.String())
}

// chmods sets modes, in order.
func (r *run) chmods(modes []pathMode) error {
	if r.store {
		ops := make([]stageops.Op, len(modes))
		for i, m := range modes {
			bits := unixmode.Perm(m.mode)
			ops[i] = stageops.Op{Path: m.path, Mode: &bits}
		}
		return r.meta(ops)
	}
	var script strings.Builder
	for _, m := range modes {
		fmt.Fprintf(&script, "chmod %04o %s\n", unixmode.Perm(m.mode), shellQuote(m.path))
	}
	return r.shUI(script.String())
}

// chown gives target and everything under it to uid:gid (numbers).
func (r *run) chown(target, uid, gid string) error {
	if r.store {
		u, _ := strconv.ParseUint(uid, 10, 32) // numeric: checkStoreOnly saw to it
		g, _ := strconv.ParseUint(gid, 10, 32)
		return r.meta([]stageops.Op{{Path: target, Owner: &[2]uint32{uint32(u), uint32(g)}}})
	}
	return r.shUI(fmt.Sprintf("chown -R %s:%s %s", uid, gid, shellQuote(target)))
}

// meta hands operations to the store-only communicator.
func (r *run) meta(ops []stageops.Op) error {
	doc := stageops.Encode(ops)
	fi := fileInfo{name: path.Base(stageops.Path), size: int64(len(doc)), mode: 0o600}
	if err := r.upload(stageops.Path, bytes.NewReader(doc), fi); err != nil {
		return fmt.Errorf("staging directories, modes and owners: %w", err)
	}
	return nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// fileInfo is the os.FileInfo Upload gets: the mode to give the file.
type fileInfo struct {
	name string
	size int64
	mode os.FileMode
}

func (f fileInfo) Name() string       { return f.name }
func (f fileInfo) Size() int64        { return f.size }
func (f fileInfo) Mode() os.FileMode  { return f.mode }
func (f fileInfo) ModTime() time.Time { return time.Unix(1, 0) }
func (f fileInfo) IsDir() bool        { return false }
func (f fileInfo) Sys() interface{}   { return nil }
