package imagecheck_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/disk"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/hosttree"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/nix/nixstore"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// image is a store-only disk image built for a test.
type image struct {
	fs      imagecheck.FS
	fsSize  int64
	closure []string
}

type buildOpts struct {
	layout disk.Type
	// editInfos changes the registration before it is written.
	editInfos func([]nixstore.PathInfo)
	// splitLinks copies each store path with its own Copier, which keeps only the
	// host's hard links within each store path instead of the builder's rule.
	splitLinks bool
}

// buildImage lays out roots' closure the way the builder's store-only mode does: each
// store path at the filesystem's root, then the registration, all owned by root.
func buildImage(t *testing.T, roots []string, o buildOpts) image {
	t.Helper()
	ctx := context.Background()
	infos, err := (&nixstore.Store{Dir: "/nix/store"}).Closure(ctx, roots)
	if err != nil {
		t.Fatal(err)
	}
	var closure []string
	for _, in := range infos {
		closure = append(closure, in.Path)
	}
	if o.editInfos != nil {
		o.editInfos(infos)
	}
	var reg bytes.Buffer
	if err := nixstore.WriteRegistration(&reg, infos); err != nil {
		t.Fatal(err)
	}
	owner := [2]uint32{0, 0}
	epoch := int64(1700000000)
	root := ext4.Header{Mode: 0o755, Mtime: epoch}
	opts := hosttree.Options{Owner: &owner, MaxMtime: &epoch}
	walker := hosttree.NewClosure(hosttree.HostPaths(closure...), opts)
	walk := func(tg hosttree.Target, setRoot func(ext4.Header) error) {
		t.Helper()
		if err := setRoot(root); err != nil {
			t.Fatal(err)
		}
		if o.splitLinks {
			for _, p := range closure {
				cp := &hosttree.Copier{T: tg, Opts: opts}
				if err := cp.Copy(ctx, p, path.Base(p)); err != nil {
					t.Fatal(err)
				}
			}
		} else if _, err := walker.Walk(ctx, tg, ""); err != nil {
			t.Fatal(err)
		}
		h := root
		h.Name, h.Mode, h.Size = nixstore.StoreImageRegistrationPath, 0o444, int64(reg.Len())
		if err := tg.Bytes(h, reg.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	sizer := ext4.NewSizer()
	walk(hosttree.Sizer(sizer), sizer.SetRoot)
	size, inodes := sizer.Plan(8 << 20)

	l, err := disk.Plan(disk.Options{Type: o.layout, RootSize: size, Seed: []byte("imagecheck")})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := l.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := ext4.NewWriter(f, l.Root().Start, ext4.Options{Size: size, Inodes: inodes, Label: "nixos", Time: epoch})
	if err != nil {
		t.Fatal(err)
	}
	walk(hosttree.Writer(w, nil), w.SetRoot)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return image{imagecheck.FS{Image: img, Offset: l.Root().Start}, size, closure}
}

func requireTools(t *testing.T) {
	for _, n := range []string{"e2fsck", "debugfs", "sfdisk", "sgdisk", "nix-store"} {
		imagecheck.RequireTool(t, n)
	}
}

// recorder is a testing.TB that records failures instead of failing the real test.
// Fatal* end the goroutine, as the real ones do, so checks run through expectFailure.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) add(s string) { r.mu.Lock(); r.msgs = append(r.msgs, s); r.mu.Unlock() }
func (r *recorder) Helper()      {}
func (r *recorder) Fail()        { r.add("Fail") }
func (r *recorder) FailNow()     { r.add("FailNow"); runtime.Goexit() }
func (r *recorder) Failed() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.msgs) > 0 }
func (r *recorder) Error(a ...any) {
	r.add(fmt.Sprint(a...))
}
func (r *recorder) Errorf(f string, a ...any) { r.add(fmt.Sprintf(f, a...)) }
func (r *recorder) Fatal(a ...any)            { r.Error(a...); runtime.Goexit() }
func (r *recorder) Fatalf(f string, a ...any) { r.Errorf(f, a...); runtime.Goexit() }

// expectFailure runs check against a recorder and fails t unless check failed with a
// message containing each of want.
func expectFailure(t *testing.T, check func(tb testing.TB), want ...string) {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() { defer close(done); check(r) }()
	<-done
	all := strings.Join(r.msgs, "\n")
	if len(r.msgs) == 0 {
		t.Fatalf("check passed, want a failure mentioning %q", want)
	}
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("failure lacks %q:\n%s", w, all)
		}
	}
	t.Logf("failed as expected:\n%.1500s", all)
}

// storeFile returns the host path of rel inside the closure path whose name ends in suffix.
func storeFile(t *testing.T, closure []string, suffix, rel string) string {
	t.Helper()
	for _, p := range closure {
		if strings.HasSuffix(p, suffix) {
			return p + "/" + rel
		}
	}
	t.Fatalf("no closure path ending in %s", suffix)
	return ""
}

func TestGoodImage(t *testing.T) {
	requireTools(t)
	im := buildImage(t, fixtures.Build(t, "small"), buildOpts{layout: disk.EFI})

	parts := imagecheck.Partitions(t, im.fs.Image)
	if len(parts) != 2 || parts[1].Start != im.fs.Offset || parts[1].Type != disk.TypeLinuxData || parts[1].Name == "" || parts[1].UUID == "" {
		t.Errorf("partitions: %+v, want the root at %d", parts, im.fs.Offset)
	}
	imagecheck.Fsck(t, im.fs)
	x := imagecheck.Extract(t, im.fs)
	imagecheck.CompareTree(t, im.fs, x, im.closure)
	imagecheck.ReadWithDiskfs(t, im.fs, im.fsSize, []string{
		storeFile(t, im.closure, "-fixture-small-a", "bin/a"),
		storeFile(t, im.closure, "-fixture-small-a", "links/slow"),
		storeFile(t, im.closure, "-fixture-small-a", "links/fast"),
		storeFile(t, im.closure, "-fixture-small-b", "etc/shared"),
		storeFile(t, im.closure, "-fixture-small-d", "share/deep/er/still/deeper/leaf.txt"),
	})
	imagecheck.VerifyRegistration(t, x, im.closure)
}

func TestNoPartitionTable(t *testing.T) {
	requireTools(t)
	im := buildImage(t, fixtures.Build(t, "small"), buildOpts{layout: disk.None})
	if p := imagecheck.Partitions(t, im.fs.Image); p != nil || im.fs.Offset != 0 {
		t.Errorf("none layout: partitions %+v, offset %d", p, im.fs.Offset)
	}
	imagecheck.Fsck(t, im.fs)
	imagecheck.CompareTree(t, im.fs, imagecheck.Extract(t, im.fs), im.closure)
}

// flip inverts one byte of the image, at byte off of filesystem block blk.
func flip(t *testing.T, fs imagecheck.FS, blk, off int64) {
	t.Helper()
	f, err := os.OpenFile(fs.Image, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	at := fs.Offset + blk*4096 + off
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

func TestFlippedDataByte(t *testing.T) {
	requireTools(t)
	im := buildImage(t, fixtures.Build(t, "small"), buildOpts{layout: disk.EFI})
	host := storeFile(t, im.closure, "-fixture-small-a", "bin/a")
	name := strings.TrimPrefix(host, "/nix/store/")
	blocks := imagecheck.Blocks(t, im.fs, name)
	if len(blocks) != 1 {
		t.Fatalf("%s: blocks %v", name, blocks)
	}
	flip(t, im.fs, blocks[0], 3)
	// File data has no checksum: e2fsck cannot see this, the tree comparison must.
	imagecheck.Fsck(t, im.fs)
	x := imagecheck.Extract(t, im.fs)
	expectFailure(t, func(tb testing.TB) { imagecheck.CompareTree(tb, im.fs, x, im.closure) }, name+": content differs")
	expectFailure(t, func(tb testing.TB) { imagecheck.ReadWithDiskfs(tb, im.fs, im.fsSize, []string{host}) }, "go-diskfs: "+name)
	// Nix sees it too: the NAR hash no longer matches.
	expectFailure(t, func(tb testing.TB) { imagecheck.VerifyRegistration(tb, x, im.closure) }, "was modified")
}

func TestCorruptInode(t *testing.T) {
	requireTools(t)
	im := buildImage(t, fixtures.Build(t, "small"), buildOpts{layout: disk.EFI})
	// "Inode 12 is part of block group 0\n\tlocated at block 1234, offset 0x0b00"
	var blk, off int64
	out := imagecheck.Debugfs(t, im.fs, "imap <12>")
	if _, err := fmt.Sscanf(out[strings.Index(out, "located"):], "located at block %d, offset 0x%x", &blk, &off); err != nil {
		t.Fatalf("imap: %v\n%s", err, out)
	}
	flip(t, im.fs, blk, off+0x20) // i_generation: only the checksum notices
	expectFailure(t, func(tb testing.TB) { imagecheck.Fsck(tb, im.fs) }, "e2fsck -fn", "checksum")
}

func TestRootEntries(t *testing.T) {
	requireTools(t)
	im := buildImage(t, fixtures.Build(t, "small"), buildOpts{layout: disk.EFI})
	x := imagecheck.Extract(t, im.fs)
	extra := im.closure[0]
	expectFailure(t, func(tb testing.TB) { imagecheck.CompareTree(tb, im.fs, x, im.closure[1:]) },
		"/"+path.Base(extra)+": unexpected entry at the filesystem root")
	// A path the image lacks: any valid store path outside the closure will do.
	other := fixtures.Build(t, "tiny64")[0]
	expectFailure(t, func(tb testing.TB) { imagecheck.CompareTree(tb, im.fs, x, append(im.closure, other)) },
		path.Base(other)+": missing from the image")
	expectFailure(t, func(tb testing.TB) { imagecheck.VerifyRegistration(tb, x, im.closure[1:]) },
		"lists paths outside the closure")
}

func TestSplitHardLinks(t *testing.T) {
	requireTools(t)
	im := buildImage(t, fixtures.Build(t, "small"), buildOpts{layout: disk.EFI, splitLinks: true})
	imagecheck.Fsck(t, im.fs) // a valid filesystem, just not the store's link structure
	x := imagecheck.Extract(t, im.fs)
	expectFailure(t, func(tb testing.TB) { imagecheck.CompareTree(tb, im.fs, x, im.closure) }, "the same content and mode, but image inodes")
}

func TestWrongRegistrationHash(t *testing.T) {
	requireTools(t)
	var changed string
	im := buildImage(t, fixtures.Build(t, "small"), buildOpts{layout: disk.EFI, editInfos: func(infos []nixstore.PathInfo) {
		h := []byte(infos[0].NarHash)
		h[len(h)-1] ^= 1 // still a hex digit: '0'..'9' and 'a'..'f' map into themselves
		infos[0].NarHash, changed = string(h), infos[0].Path
	}})
	x := imagecheck.Extract(t, im.fs)
	imagecheck.CompareTree(t, im.fs, x, im.closure) // the tree itself is fine
	expectFailure(t, func(tb testing.TB) { imagecheck.VerifyRegistration(tb, x, im.closure) },
		"path '"+changed+"' was modified", "registration of "+changed)
}

func TestBrokenBackupGPT(t *testing.T) {
	requireTools(t)
	im := buildImage(t, fixtures.Build(t, "small"), buildOpts{layout: disk.EFI})
	f, err := os.OpenFile(im.fs.Image, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	// The backup GPT header is the last sector.
	if _, err := f.WriteAt(make([]byte, 512), st.Size()-512); err != nil {
		t.Fatal(err)
	}
	f.Close()
	expectFailure(t, func(tb testing.TB) { imagecheck.Partitions(tb, im.fs.Image) }, "backup GPT table is corrupt", "sgdisk -v", "Backup header: ERROR")
}

// TestMany runs the checks on a 20000-entry directory and 122 store paths: the debugfs work
// is batched, so this stays a few seconds.
func TestMany(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	requireTools(t)
	im := buildImage(t, fixtures.Build(t, "many"), buildOpts{layout: disk.LegacyGPT})
	imagecheck.Fsck(t, im.fs)
	x := imagecheck.Extract(t, im.fs)
	imagecheck.CompareTree(t, im.fs, x, im.closure)
	imagecheck.VerifyRegistration(t, x, im.closure)
}
