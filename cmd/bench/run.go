package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
)

// contenderKeys name the contenders for -only, in table order: packer is
// ours through a real `packer build` (every -ui mode), inprocess ours'
// writer in a child process of the bench (without packer, a row of its own;
// with it, a column of the packer rows), floors the read, tar and dd floors.
var contenderKeys = []string{"packer", "inprocess", "mkfs", "repart", "go-diskfs", "floors"}

// longRun: a run this slow is not repeated, so a slow peer cannot push
// `make bench` past its time budget; the row says how many runs it got.
const longRun = 60 * time.Second

type contender struct {
	key, name string
	image     bool // writes the image file (timed up to its fsync)
	cmd       func(image string) *exec.Cmd
	// run, if set, replaces cmd: it times one run itself (to the image's
	// fsync) and returns its wall time, peak RSS and output.
	run      func(ctx context.Context, image string) (time.Duration, int64, []byte, error)
	fsOffset int64 // where the filesystem starts in the image
	noFsck   bool  // the image is a copy of another's (the dd floor)
	// keep: where the last image goes instead of being removed, unless a
	// file is there already (the dd floor's source).
	keep string
	// prep runs before each run, untimed.
	prep func() error
}

type row struct {
	name     string
	times    []time.Duration
	rss      int64 // bytes, the largest over the runs
	size     int64 // image file's length
	alloc    int64 // image file's allocated bytes (it is sparse)
	err      string
	timedOut bool
	// unavailable: the tool could not run in this environment at all (not
	// installed, no loop devices, no mounting), as opposed to failing.
	unavailable bool
	timeout     time.Duration
	note        string
	fsck        string // e2fsck's verdict on the last image
	inproc      *row   // packer rows: the in-process writer's figures
}

func (r *row) median() time.Duration {
	if len(r.times) == 0 {
		return 0
	}
	t := append([]time.Duration(nil), r.times...)
	for i := 1; i < len(t); i++ {
		for j := i; j > 0 && t[j] < t[j-1]; j-- {
			t[j], t[j-1] = t[j-1], t[j]
		}
	}
	if len(t)%2 == 1 {
		return t[len(t)/2]
	}
	return (t[len(t)/2-1] + t[len(t)/2]) / 2
}

func (r *row) ok() bool { return r.err == "" && !r.timedOut && len(r.times) > 0 }

type fixtureResult struct {
	name           string
	paths          int
	entries, bytes int64
	size           int64
	inodes         uint32
	runs           int
	rows           []*row
	ours           *row   // the × ours reference: the first packer row that finished, else the in-process writer
	packer         []*row // ours through `packer build`, one per UI mode
	mkfs, mkfsN    *row
	dd             *row
	peers          []*row // image writers other than ours
}

func benchFixture(ctx context.Context, c config, name string) (*fixtureResult, error) {
	logf("%s: resolving the closure", name)
	paths, err := closure(name)
	if err != nil {
		return nil, err
	}
	res := &fixtureResult{name: name, paths: len(paths), runs: c.runs}

	// The warm-up read pass: every contender then meets a hot page cache.
	logf("%s: warming the page cache (%d store paths)", name, len(paths))
	st, err := readTree(paths)
	if err != nil {
		return nil, err
	}
	res.entries, res.bytes = st.entries, st.bytes
	extra := res.bytes * int64(c.extraPct) / 100

	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	res.size, res.inodes, err = planSize(self, paths, extra)
	if err != nil {
		return nil, fmt.Errorf("planning: %w", err)
	}
	logf("%s: %d entries, %s; image %s, %d inodes", name, res.entries, human(res.bytes), human(res.size), res.inodes)

	dir := filepath.Join(c.tmp, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer removeAll(dir)
	image := filepath.Join(dir, "image.raw")
	stageDir := filepath.Join(dir, "stage")
	want := func(k string) bool { return c.only == nil || c.only[k] }
	if want("mkfs") || want("repart") {
		logf("%s: staging the tree for mkfs.ext4 -d and systemd-repart (untimed)", name)
		if err := stage(paths, stageDir); err != nil {
			return nil, err
		}
	}

	child := func(kind string) func(string) *exec.Cmd {
		return func(img string) *exec.Cmd {
			args := []string{childCmd, kind, "-image", img, "-size", strconv.FormatInt(res.size, 10),
				"-inodes", strconv.FormatUint(uint64(res.inodes), 10), "-extra", strconv.FormatInt(extra, 10)}
			return exec.Command(self, append(append(args, "--"), paths...)...)
		}
	}
	mkfs := func(withN bool) func(string) *exec.Cmd {
		return func(img string) *exec.Cmd {
			args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-L", "nixos",
				"-U", fixedUUID, "-E", "hash_seed=" + fixedUUID + ",root_owner=0:0", "-d", stageDir}
			if withN {
				args = append(args, "-N", strconv.FormatUint(uint64(res.inodes), 10))
			}
			args = append(args, img, strconv.FormatInt(res.size/1024, 10)+"k")
			cmd := exec.Command("mkfs.ext4", args...)
			cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.Itoa(epoch))
			return cmd
		}
	}
	repartDefs := filepath.Join(dir, "repart.d")
	if want("repart") {
		if err := writeRepartDefs(repartDefs); err != nil {
			return nil, err
		}
	}
	mke2fsConf := filepath.Join(dir, "mke2fs.conf")
	repart := func(ratioConf bool) func(string) *exec.Cmd {
		return func(img string) *exec.Cmd {
			// The partition table's 1 MiB at each end comes on top of ours'
			// size, so the root partition gets about the same room.
			cmd := exec.Command("systemd-repart", "--dry-run=no", "--no-pager", "--empty=create",
				"--size="+strconv.FormatInt(res.size+2<<20, 10), "--seed="+fixedUUID,
				"--definitions="+repartDefs, "--root="+stageDir, img)
			cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.Itoa(epoch))
			if ratioConf {
				cmd.Env = append(cmd.Env, "MKE2FS_CONFIG="+mke2fsConf)
			}
			return cmd
		}
	}

	// Run order: the floors and ours first, while nothing else has disturbed
	// the page cache; the table lists them in contenderKeys order anyway.
	var cs []contender
	floorSrc := filepath.Join(dir, "floor-src.img")
	var floors []contender
	if want("floors") {
		floors = floorContenders(paths, floorSource(ctx, floorSrc, paths, extra))
		cs = append(cs, contender{key: "floors", name: "reading the tree (floor)", cmd: child("read")}, floors[0])
	}
	if want("packer") {
		roots, err := fixtureRoots(name)
		if err != nil {
			return nil, err
		}
		b, err := newStoreBuild(c, dir, roots, extra)
		if err != nil {
			return nil, fmt.Errorf("packer build: %w", err)
		}
		for _, ui := range c.ui {
			ct := b.contender(ui)
			ct.keep = floorSrc
			cs = append(cs, ct)
		}
	}
	if want("inprocess") {
		cs = append(cs, contender{key: "inprocess", name: "ours in-process (hosttree → ext4)", image: true, cmd: child("ours"), keep: floorSrc})
	}
	if want("floors") {
		cs = append(cs, floors[1])
	}
	if want("mkfs") {
		cs = append(cs,
			contender{key: "mkfs", name: "mkfs.ext4 -d", image: true, cmd: mkfs(false)},
			contender{key: "mkfs", name: "mkfs.ext4 -N -d", image: true, cmd: mkfs(true)})
	}
	if want("repart") {
		// repart (v252) has no inode-count setting; the mkfs.ext4 it runs
		// takes an inode ratio from MKE2FS_CONFIG, the peer of -N above.
		ratio := max(1024, res.size/int64(max(res.inodes, 1))&^1023)
		cs = append(cs,
			contender{key: "repart", name: "systemd-repart CopyFiles=", image: true, cmd: repart(false), fsOffset: repartOffset},
			contender{key: "repart", name: fmt.Sprintf("systemd-repart CopyFiles=, inode_ratio=%d", ratio), image: true, cmd: repart(true), fsOffset: repartOffset,
				prep: func() error { return writeMke2fsConf(mke2fsConf, ratio) }})
	}
	if want("go-diskfs") {
		cs = append(cs, contender{key: "go-diskfs", name: "go-diskfs ext4", image: true, cmd: child("go-diskfs")})
	}

	rows := map[string][]*row{}
	var inproc *row
	for _, ct := range cs {
		r := measure(ctx, c, ct, image)
		rows[ct.key] = append(rows[ct.key], r)
		switch {
		case ct.key == "packer":
			res.packer = append(res.packer, r)
		case ct.key == "inprocess":
			inproc = r
		case ct.name == "mkfs.ext4 -d":
			res.mkfs = r
		case ct.name == "mkfs.ext4 -N -d":
			res.mkfsN = r
		case ct.key == "floors" && ct.image:
			res.dd = r
		}
		if ct.image && ct.key != "packer" && ct.key != "inprocess" && ct.key != "floors" {
			res.peers = append(res.peers, r)
		}
	}
	os.Remove(floorSrc)
	if inproc != nil && len(res.packer) > 0 {
		// The in-process figure is a column of the packer rows.
		for _, r := range res.packer {
			r.inproc = inproc
		}
		delete(rows, "inprocess")
	}
	for _, r := range res.packer {
		if r.ok() {
			res.ours = r
			break
		}
	}
	if res.ours == nil && len(res.packer) == 0 {
		res.ours = inproc
	}
	for _, k := range contenderKeys {
		res.rows = append(res.rows, rows[k]...)
	}
	return res, nil
}

// fixedUUID is the filesystem UUID and hash seed given to every tool that
// takes one, so runs are comparable and repeatable.
const fixedUUID = "6e697865-6f73-4265-a263-68656e636821"

var fsUUID = uuid.MustParse(fixedUUID)

// repartOffset is where repart puts the first partition (1 MiB alignment).
const repartOffset = 1 << 20

func writeRepartDefs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conf := "[Partition]\nType=root\nFormat=ext4\nLabel=nixos\nCopyFiles=/:/\n"
	return os.WriteFile(filepath.Join(dir, "10-root.conf"), []byte(conf), 0o644)
}

// writeMke2fsConf writes the system's mke2fs.conf with inode_ratio first in
// [defaults] (the first value of a relation wins), keeping the ext4 features.
func writeMke2fsConf(name string, ratio int64) error {
	sys, err := os.ReadFile("/etc/mke2fs.conf")
	if err != nil {
		return err
	}
	line := fmt.Sprintf("[defaults]\n\tinode_ratio = %d\n", ratio)
	conf := strings.Replace(string(sys), "[defaults]\n", line, 1)
	if !strings.Contains(conf, line) {
		conf = line + conf
	}
	return os.WriteFile(name, []byte(conf), 0o644)
}

// measure runs ct up to c.runs times. Time runs from the child's start to the
// image's fsync (done here, so every tool pays for getting its data to disk;
// those that already synced pay almost nothing twice).
func measure(ctx context.Context, c config, ct contender, image string) *row {
	r := &row{name: ct.name, timeout: c.timeout}
	logf("  %s", ct.name)
	for i := 0; i < c.runs; i++ {
		os.Remove(image)
		// Flush what earlier runs left dirty, so nobody pays for another's writeback.
		syscall.Sync()
		if ct.prep != nil {
			if err := ct.prep(); err != nil {
				r.err = err.Error()
				return r
			}
		}
		var el time.Duration
		var rss int64
		var out []byte
		var err error
		if ct.run != nil {
			el, rss, out, err = ct.run(ctx, image)
		} else {
			el, rss, out, err = runOnce(ctx, c.timeout, ct.cmd(image), ct.image, image)
		}
		r.rss = max(r.rss, rss)
		if errors.Is(err, context.DeadlineExceeded) {
			r.timedOut = true
			logf("    run %d: over %s, stopped", i+1, c.timeout)
			break
		}
		if err != nil {
			// Scratch paths are noise in a table meant for the README.
			r.err = strings.ReplaceAll(reason(err, out), c.tmp, "$TMP")
			r.unavailable = cannotRunHere(err, out)
			logf("    run %d: failed: %v\n%s", i+1, err, tail(out, 20))
			break
		}
		r.times = append(r.times, el)
		logf("    run %d: %s, peak RSS %s", i+1, dur(el), human(r.rss))
		if el > longRun && i+1 < c.runs {
			r.note = fmt.Sprintf("%d run", i+1)
			break
		}
	}
	if ct.image && r.ok() {
		if c.fsck && !ct.noFsck {
			r.fsck = fsck(image, ct.fsOffset)
		}
		if fi, err := os.Stat(image); err == nil {
			r.size = fi.Size()
			r.alloc = allocatedBytes(fi)
		}
	}
	if _, err := os.Stat(ct.keep); ct.keep != "" && r.ok() && errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(image, ct.keep); err == nil {
			return r
		}
	}
	os.Remove(image)
	return r
}

func runOnce(ctx context.Context, limit time.Duration, cmd *exec.Cmd, hasImage bool, image string) (time.Duration, int64, []byte, error) {
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	// Own process group, so a timeout also stops the tool's own children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, nil, err
	}
	stop := context.AfterFunc(cctx, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err := cmd.Wait()
	stop()
	var rss int64
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			rss = ru.Maxrss * 1024 // Linux reports KiB
		}
	}
	if cctx.Err() != nil && ctx.Err() == nil {
		return time.Since(start), rss, out.Bytes(), context.DeadlineExceeded
	}
	if err == nil && hasImage {
		err = fsync(image)
	}
	return time.Since(start), rss, out.Bytes(), err
}

func fsync(name string) error {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// planSize asks the "plan" child for the size and inode count the tree
// needs with its own hard links (planPeers), which every peer gets; ours
// plans its own, smaller when identical files become one inode, with the
// same free space.
func planSize(self string, paths []string, extra int64) (int64, uint32, error) {
	args := append([]string{childCmd, "plan", "-extra", strconv.FormatInt(extra, 10), "--"}, paths...)
	cmd := exec.Command(self, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("%v: %s", err, stderr.String())
	}
	var size int64
	var inodes uint32
	if _, err := fmt.Sscan(string(out), &size, &inodes); err != nil {
		return 0, 0, fmt.Errorf("plan printed %q: %v", out, err)
	}
	return size, inodes, nil
}
