package vmlinux

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/imagecheck"
)

// compress runs the real tool as the kernel build does (scripts/xz_wrap.sh
// with the x86 BCJ filter; zstd -22; gzip -9).
func compress(t *testing.T, tool string, data []byte) []byte {
	t.Helper()
	imagecheck.RequireTool(t, tool)
	args := map[string][]string{
		"xz":   {"--check=crc32", "--x86", "--lzma2=dict=1MiB", "-c"},
		"zstd": {"-q", "-19", "-c"},
		"gzip": {"-9", "-n", "-c"},
	}[tool]
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	return out
}

// bzImage lays out a minimal bzImage: one setup sector after the boot
// sector, then the payload with its decompressed size appended, as the
// kernel build does.
func bzImage(t *testing.T, payload []byte, size uint32) string {
	t.Helper()
	img := make([]byte, 2*512)
	le := binary.LittleEndian
	img[offSetupSects] = 1
	copy(img[offMagic:], "HdrS")
	le.PutUint16(img[offVersion:], 0x20f)
	le.PutUint32(img[offPayloadOff:], 0x100)
	le.PutUint32(img[offPayloadLen:], uint32(len(payload)+4))
	le.PutUint32(img[offInitSize:], 64<<20)
	img = append(img, make([]byte, 0x100)...)
	img = append(img, payload...)
	img = le.AppendUint32(img, size)
	p := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// x86Code is this test binary (a few MiB): x86-64 code full of CALL and JMP
// instructions, which the BCJ filter rewrites, and no PVH note.
func x86Code(t *testing.T) []byte {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Issue 12 (TCG boot): each format the kernel build uses decompresses to
// the original bytes (xz through our x86 BCJ decoder, checked against the
// real xz's encoder on real x86 code); an ELF without a PVH note is then
// refused and nothing is left at dst.
func TestExtractFormats(t *testing.T) {
	code := x86Code(t)
	for _, tool := range []string{"xz", "zstd", "gzip"} {
		t.Run(tool, func(t *testing.T) {
			src := bzImage(t, compress(t, tool, code), uint32(len(code)))
			dst := filepath.Join(t.TempDir(), "vmlinux")
			r, err := open(src)
			if err != nil {
				t.Fatal(err)
			}
			got := new(bytes.Buffer)
			if _, err := got.ReadFrom(r); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), code) {
				t.Fatalf("decompressed %d bytes differ from the %d compressed", got.Len(), len(code))
			}
			err = Extract(src, dst)
			if err == nil || !strings.Contains(err.Error(), "no PVH entry") {
				t.Errorf("Extract of a kernel without PVH: %v", err)
			}
			if _, serr := os.Stat(dst); !os.IsNotExist(serr) {
				t.Errorf("a refused kernel left %s (%v)", dst, serr)
			}
		})
	}
}

// open is Extract's reading half, for the test above.
func open(src string) (*bytes.Reader, error) {
	f, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, _ := f.Stat()
	off, length, _, err := payload(f, fi.Size())
	if err != nil {
		return nil, err
	}
	r, err := decompressor(bufioReader(f, off, length-4))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(r); err != nil {
		return nil, err
	}
	return bytes.NewReader(b.Bytes()), nil
}

// Headers and payloads that do not add up are refused before anything is
// written.
func TestExtractRefuses(t *testing.T) {
	code := []byte("\x7fELF not really")
	gz := compress(t, "gzip", code)
	for name, tc := range map[string]struct {
		src  func() string
		want string
	}{
		"not a bzImage": {func() string { return writeFile(t, bytes.Repeat([]byte{1}, 4096)) }, "not a bzImage"},
		"payload past the end": {func() string {
			p := bzImage(t, gz, uint32(len(code)))
			b, _ := os.ReadFile(p)
			binary.LittleEndian.PutUint32(b[offPayloadLen:], 1<<20)
			return writeFile(t, b)
		}, "is not inside"},
		"size beyond init_size": {func() string { return bzImage(t, gz, 1<<31) }, "the header allows"},
		"wrong size":            {func() string { return bzImage(t, gz, uint32(len(code)+1)) }, "the build recorded"},
		"unknown format":        {func() string { return bzImage(t, []byte("BZh91AY&SY not here"), 10) }, "not unpacked here"},
	} {
		t.Run(name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "vmlinux")
			err := Extract(tc.src(), dst)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
			if _, serr := os.Stat(dst); !os.IsNotExist(serr) {
				t.Errorf("left %s (%v)", dst, serr)
			}
		})
	}
}

// A real kernel (the host's, as Debian ships it: xz with BCJ, CONFIG_PVH)
// unpacks to what xz itself makes of its payload.
func TestExtractRealKernel(t *testing.T) {
	imagecheck.RequireTool(t, "xz")
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(kernels) == 0 {
		t.Skip("no kernel in /boot")
	}
	src := kernels[0]
	dst := filepath.Join(t.TempDir(), "vmlinux")
	if err := Extract(src, dst); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	off, length, _, err := payload(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("xz", "-dc", "--single-stream")
	cmd.Stdin = bufioReader(f, off, length-4)
	want, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz -dc: %v", err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("unpacked %d bytes; xz makes %d, and they differ", len(got), len(want))
	}
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
