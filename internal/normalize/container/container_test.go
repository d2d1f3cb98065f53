package container

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/spec/vhdspec"
	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

var testOpts = Options{Seed: []byte("test image"), Time: 1700000000}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// writeRaw makes a sparse raw image of size bytes with n bytes of
// pseudo-random data at each offset.
func writeRaw(t *testing.T, path string, size, n int64, offsets ...int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, n)
	for _, off := range offsets {
		rng.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

func sum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func normalize(t *testing.T, path string, o Options) (Report, error) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Normalize(f, o)
}

func mustNormalize(t *testing.T, path string, o Options) Report {
	t.Helper()
	rep, err := normalize(t, path, o)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

type convCase struct {
	name   string
	format Format
	args   []string
	raw    string // which raw image: "small" or "log"
	random bool   // qemu-img output differs between runs
	check  bool   // qemu-img check supports the format
	fields []string
}

var vhdxFields = []string{
	"vhdx virtual disk id", "vhdx stale log entries",
	"vhdx header 1 sequence number", "vhdx header 1 file write GUID", "vhdx header 1 data write GUID", "vhdx header 1 checksum",
	"vhdx header 2 sequence number", "vhdx header 2 file write GUID", "vhdx header 2 data write GUID", "vhdx header 2 checksum",
}

var cases = []convCase{
	{"vpc-dynamic", VPC, []string{"-o", "subformat=dynamic"}, "small", true, false,
		[]string{"vpc footer timestamp", "vpc footer unique id", "vpc footer checksum"}},
	{"vpc-fixed", VPC, []string{"-o", "subformat=fixed"}, "small", true, false,
		[]string{"vpc footer timestamp", "vpc footer unique id", "vpc footer checksum"}},
	{"vdi", VDI, nil, "small", true, true, []string{"vdi image UUID", "vdi last snapshot UUID"}},
	{"vhdx", VHDX, nil, "small", true, true, vhdxFields},
	// 1 MiB blocks and a BAT update per MiB overrun the 1 MiB log, which
	// then wraps.
	{"vhdx-wrapped-log", VHDX, []string{"-o", "block_size=1M"}, "log", true, true, vhdxFields},
	{"vmdk-monolithicSparse", VMDK, nil, "small", true, true, []string{"vmdk descriptor CID"}},
	{"vmdk-streamOptimized", VMDK, []string{"-o", "subformat=streamOptimized"}, "small", true, true, []string{"vmdk descriptor CID"}},
	{"qcow2", QCOW2, nil, "small", false, true, nil},
	{"qcow2-zlib", QCOW2, []string{"-c", "-o", "compression_type=zlib"}, "small", false, true, nil},
	{"qcow2-zstd", QCOW2, []string{"-c", "-o", "compression_type=zstd"}, "small", false, true, nil},
}

// convertAll converts the raw images with every case into dir/<case>/disk,
// always the same base name, as the vmdk descriptor records it.
func convertAll(t *testing.T, raws map[string]string, dir string) {
	for _, c := range cases {
		out := filepath.Join(dir, c.name, "disk")
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"convert", "-q", "-f", "raw", "-O", string(c.format)}, c.args...)
		run(t, append(args, raws[c.raw], out)...)
	}
}

func TestNormalizeQemuImgOutput(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	raws := map[string]string{"small": filepath.Join(dir, "small.raw"), "log": filepath.Join(dir, "log.raw")}
	const mib = 1 << 20
	writeRaw(t, raws["small"], 64*mib, 2*mib, 1*mib, 10*mib+4096, 33*mib, 62*mib)
	var every []int64
	for off := int64(0); off < 256*mib; off += mib {
		every = append(every, off)
	}
	writeRaw(t, raws["log"], 256*mib, 4096, every...)

	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	convertAll(t, raws, a)
	time.Sleep(1100 * time.Millisecond) // so the VHD timestamps differ
	convertAll(t, raws, b)

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pa, pb := filepath.Join(a, c.name, "disk"), filepath.Join(b, c.name, "disk")
			if differ := sum(t, pa) != sum(t, pb); differ != c.random {
				t.Fatalf("qemu-img output differs between runs: %v, expected %v", differ, c.random)
			}
			for _, p := range []string{pa, pb} {
				f, err := os.Open(p)
				if err != nil {
					t.Fatal(err)
				}
				fi, _ := f.Stat()
				got, err := Detect(f, fi.Size())
				f.Close()
				if err != nil || got != c.format {
					t.Fatalf("Detect = %q, %v; want %q", got, err, c.format)
				}
			}

			ra, rb := mustNormalize(t, pa, testOpts), mustNormalize(t, pb, testOpts)
			for _, rep := range []Report{ra, rb} {
				if rep.Format != c.format {
					t.Errorf("report format %q, want %q", rep.Format, c.format)
				}
			}
			t.Logf("fields: %q", rb.Fields)
			for _, want := range c.fields {
				if !slices.Contains(rb.Fields, want) {
					t.Errorf("report %q lacks %q", rb.Fields, want)
				}
			}
			if !c.random && (len(ra.Fields) > 0 || len(rb.Fields) > 0) {
				t.Errorf("deterministic format reported changes: %q %q", ra.Fields, rb.Fields)
			}
			h := sum(t, pa)
			if h != sum(t, pb) {
				t.Fatal("normalised outputs differ")
			}
			verify(t, c, raws[c.raw], pa)

			if rep := mustNormalize(t, pa, testOpts); len(rep.Fields) > 0 || sum(t, pa) != h {
				t.Errorf("second Normalize changed %q", rep.Fields)
			}

			// Another seed gives other identifiers, and a valid image.
			pc := filepath.Join(t.TempDir(), "disk")
			copyFile(t, pa, pc)
			other := testOpts
			other.Seed = []byte("another image")
			mustNormalize(t, pc, other)
			if c.random && sum(t, pc) == h {
				t.Error("a different seed gave the same bytes")
			}
			verify(t, c, raws[c.raw], pc)
		})
	}
}

// verify has qemu-img check the image and compare it with the raw image.
func verify(t *testing.T, c convCase, raw, path string) {
	t.Helper()
	if c.check {
		run(t, "check", "-f", string(c.format), path)
	}
	if out := run(t, "compare", "-f", "raw", "-F", string(c.format), raw, path); !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare: %s", out)
	}
}

func TestRawUntouched(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.raw")
	writeRaw(t, p, 1<<20, 4096, 0)
	h := sum(t, p)
	rep := mustNormalize(t, p, testOpts)
	if rep.Format != Raw || len(rep.Fields) > 0 || sum(t, p) != h {
		t.Fatalf("raw image: %+v", rep)
	}
	if _, err := normalize(t, p, Options{}); err == nil {
		t.Fatal("empty seed accepted")
	}
}

// convertOne converts a small raw image to the format and returns the path.
func convertOne(t *testing.T, format Format, args ...string) (raw, out string) {
	t.Helper()
	imagecheck.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	raw, out = filepath.Join(dir, "disk.raw"), filepath.Join(dir, "disk")
	writeRaw(t, raw, 16<<20, 1<<20, 0, 9<<20)
	run(t, append(append([]string{"convert", "-q", "-f", "raw", "-O", string(format)}, args...), raw, out)...)
	return raw, out
}

func TestVPCTimestamp(t *testing.T) {
	for _, sub := range []string{"dynamic", "fixed"} {
		_, p := convertOne(t, VPC, "-o", "subformat="+sub)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		offsets := []int64{fi.Size() - 512}
		if sub == "dynamic" {
			offsets = append(offsets, 0)
		}
		for _, tc := range []struct{ unix, want int64 }{
			{time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC).Unix(), 757479845},
			{0, 0}, // before the VHD epoch: clamped
		} {
			o := testOpts
			o.Time = tc.unix
			mustNormalize(t, p, o)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, off := range offsets {
				if got := int64(binary.BigEndian.Uint32(b[off+vhdspec.OffTimestamp:])); got != tc.want {
					t.Errorf("%s: footer at %d: timestamp %d, want %d", sub, off, got, tc.want)
				}
			}
		}
	}
}

// TestRefusesDamage damages one structure per case and expects Normalize to
// name it and leave the file alone.
func TestRefusesDamage(t *testing.T) {
	cases := []struct {
		name   string
		format Format
		args   []string
		damage func(b []byte) int64 // returns the offset to flip
		want   string
	}{
		{"vpc footer", VPC, nil, func(b []byte) int64 { return int64(len(b)) - 512 + vhdspec.OffUniqueID }, "footer at end of file: checksum"},
		{"vpc footer copy", VPC, nil, func(b []byte) int64 { return vhdspec.OffUniqueID }, "footer copy at offset 0 differs"},
		{"vpc dynamic header", VPC, nil, func(b []byte) int64 { return 512 + 200 }, "dynamic disk header: checksum"},
		{"vpc fixed footer", VPC, []string{"-o", "subformat=fixed"}, func(b []byte) int64 { return int64(len(b)) - 512 + vhdspec.OffTimestamp }, "checksum"},
		{"vhdx header", VHDX, nil, func(b []byte) int64 { return vhdxHeader2 + 1000 }, "header 2: checksum"},
		{"vhdx region table", VHDX, nil, func(b []byte) int64 { return vhdxRegion1 + 1000 }, "region table 1: checksum"},
		{"vhdx log entry", VHDX, nil, func(b []byte) int64 { return 1<<20 + 4096 + 100 }, "log entry at log offset 0x0: checksum"},
		{"vdi version", VDI, nil, func(b []byte) int64 { return 70 }, "header version"},
		{"vmdk CID", VMDK, nil, func(b []byte) int64 { return int64(bytes.Index(b, []byte("CID="))) + 2 }, "no CID line"},
		{"vmdk newline check", VMDK, nil, func(b []byte) int64 { return vmdkNewlines + 2 }, "newline check"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, p := convertOne(t, c.format, c.args...)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[c.damage(b)] ^= 0x20
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			h := sum(t, p)
			_, err = normalize(t, p, testOpts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Normalize error %v, want one mentioning %q", err, c.want)
			}
			if sum(t, p) != h {
				t.Fatal("refused file was modified")
			}
		})
	}
}

// Normalised images stay writable: qemu takes a vhdx whose stale log was
// cleared as one with an empty log, writes through it and reads back.
func TestNormalizedStaysWritable(t *testing.T) {
	imagecheck.RequireTool(t, "qemu-io")
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw")
	writeRaw(t, raw, 64<<20, 1<<20, 0, 8<<20)
	for _, f := range []string{"vhdx", "vpc", "vdi", "vmdk"} {
		p := filepath.Join(dir, "disk."+f)
		run(t, "convert", "-f", "raw", "-O", f, raw, p)
		mustNormalize(t, p, testOpts)
		for _, c := range []string{"write -P 0xab 20M 64k", "read -P 0xab 20M 64k"} {
			if out, err := exec.Command("qemu-io", "-f", f, "-c", c, p).CombinedOutput(); err != nil || strings.Contains(string(out), "fail") {
				t.Fatalf("%s: qemu-io %q: %v\n%s", f, c, err, out)
			}
		}
		if f != "vpc" {
			run(t, "check", "-f", f, p)
		}
	}
}
