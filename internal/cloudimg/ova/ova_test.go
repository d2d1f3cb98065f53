package ova

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const testMtime = 1700000000

// makeVMDK writes a raw disk of size bytes, with pseudo-random data in
// dataBytes of it (the rest holes), and converts it with qemu-img to a VMDK
// of the given subformat. It returns both paths.
func makeVMDK(t *testing.T, size, dataBytes int64, subformat string) (raw, vmdk string) {
	t.Helper()
	qemuImg := lookPath(t, "qemu-img")
	dir := t.TempDir()
	raw, vmdk = filepath.Join(dir, "disk.raw"), filepath.Join(dir, "disk.vmdk")
	data := make([]byte, dataBytes)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Truncate(size), f.Close()); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+subformat, raw, vmdk).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	return raw, vmdk
}

// writeOVA writes the OVA of m and the VMDK at vmdk into a new file.
func writeOVA(t *testing.T, m Machine, vmdk string, capacity, mtime int64, progress func(int64)) string {
	t.Helper()
	disk, err := os.Open(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	path := filepath.Join(t.TempDir(), m.Name+".ova")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := Write(out, m, disk, capacity, mtime, progress); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWrite(t *testing.T) {
	const capacity = 5 << 20
	for _, m := range testMachines[:2] {
		t.Run(m.Firmware, func(t *testing.T) {
			raw, vmdk := makeVMDK(t, capacity, 1<<20, "streamOptimized")
			ova := writeOVA(t, m, vmdk, capacity, testMtime, nil)
			names := []string{m.Name + ".ovf", m.Name + "-disk1.vmdk", m.Name + ".mf"}

			// GNU tar lists the members in order, as owned by 0:0, mode 0644.
			tarBin := lookPath(t, "tar")
			out, err := exec.Command(tarBin, "--list", "--verbose", "--numeric-owner", "--full-time", "-f", ova).CombinedOutput()
			if err != nil {
				t.Fatalf("tar --list: %v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != len(names) {
				t.Fatalf("tar lists:\n%s\nwant %v", out, names)
			}
			stamp := time.Unix(testMtime, 0).Local().Format("2006-01-02 15:04:05")
			for i, line := range lines {
				f := strings.Fields(line)
				if len(f) != 6 || f[0] != "-rw-r--r--" || f[1] != "0/0" || f[3]+" "+f[4] != stamp || f[5] != names[i] {
					t.Errorf("tar lists member %d as %q, want -rw-r--r-- 0/0 ... %s %s", i, line, stamp, names[i])
				}
			}

			members := readUSTAR(t, ova)
			var got []string
			for _, mb := range members {
				got = append(got, mb.Name)
			}
			if !slices.Equal(got, names) {
				t.Fatalf("members %v, want %v", got, names)
			}

			// GNU tar extracts them; the manifest holds their SHA256.
			dir := t.TempDir()
			if out, err := exec.Command(tarBin, "-xf", ova, "-C", dir).CombinedOutput(); err != nil {
				t.Fatalf("tar -x: %v\n%s", err, out)
			}
			manifest, err := os.ReadFile(filepath.Join(dir, names[2]))
			if err != nil {
				t.Fatal(err)
			}
			var want strings.Builder
			for _, n := range names[:2] {
				b, err := os.ReadFile(filepath.Join(dir, n))
				if err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256(b)
				want.WriteString("SHA256(" + n + ")= " + hex.EncodeToString(sum[:]) + "\n")
			}
			if string(manifest) != want.String() {
				t.Errorf("manifest:\n%s\nwant:\n%s", manifest, want.String())
			}

			// The disk is the VMDK given, byte for byte, and its File size.
			src, err := os.ReadFile(vmdk)
			if err != nil {
				t.Fatal(err)
			}
			extracted := filepath.Join(dir, names[1])
			if got, err := os.ReadFile(extracted); err != nil || !bytes.Equal(got, src) {
				t.Errorf("extracted disk differs from the VMDK given (%v)", err)
			}
			desc, err := os.ReadFile(filepath.Join(dir, names[0]))
			if err != nil {
				t.Fatal(err)
			}
			checkDescriptor(t, desc, m, members[1].Size, capacity)

			checkQemuImg(t, raw, extracted, capacity)
		})
	}
}

// readUSTAR reads the archive's headers, checking each is a plain ustar
// header (magic "ustar\0", version "00") of a regular file, owner 0:0
// without names, mode 0644 and the test's mtime.
func readUSTAR(t *testing.T, path string) []*tar.Header {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(b))
	var hs []*tar.Header
	off := int64(0)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		blk := b[off : off+512]
		if string(blk[257:263]) != "ustar\x00" || string(blk[263:265]) != "00" {
			t.Errorf("%s: header magic %q %q, want ustar's", h.Name, blk[257:263], blk[263:265])
		}
		if h.Typeflag != tar.TypeReg || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" ||
			h.Mode != 0o644 || !h.ModTime.Equal(time.Unix(testMtime, 0)) || len(h.PAXRecords) != 0 {
			t.Errorf("%s: header %+v", h.Name, h)
		}
		hs = append(hs, h)
		off += 512 + (h.Size+511)/512*512
	}
	if rest := b[off:]; len(rest) < 1024 || len(bytes.Trim(rest, "\x00")) != 0 {
		t.Errorf("archive ends in %d bytes that are not the two zero blocks", len(rest))
	}
	return hs
}

// checkQemuImg has qemu-img read the extracted VMDK: stream-optimized, of
// the capacity, consistent, and holding the raw disk's data.
func checkQemuImg(t *testing.T, raw, vmdk string, capacity int64) {
	t.Helper()
	qemuImg := lookPath(t, "qemu-img")
	out, err := exec.Command(qemuImg, "info", "--output=json", "-f", "vmdk", vmdk).Output()
	if err != nil {
		t.Fatalf("qemu-img info: %v", err)
	}
	var info struct {
		Format         string `json:"format"`
		VirtualSize    int64  `json:"virtual-size"`
		FormatSpecific struct {
			Data struct {
				CreateType string `json:"create-type"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	if info.Format != "vmdk" || info.FormatSpecific.Data.CreateType != "streamOptimized" || info.VirtualSize != capacity {
		t.Errorf("qemu-img info: %s %s of %d bytes, want a streamOptimized vmdk of %d", info.Format, info.FormatSpecific.Data.CreateType, info.VirtualSize, capacity)
	}
	if out, err := exec.Command(qemuImg, "check", "-f", "vmdk", vmdk).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check: %v\n%s", err, out)
	}
	if out, err := exec.Command(qemuImg, "compare", "-f", "raw", "-F", "vmdk", raw, vmdk).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare: %v\n%s", err, out)
	}
}

// The OVA depends on its inputs' bytes alone: not on the disk file's name,
// mode, times or directory, nor on when it is written.
func TestReproducible(t *testing.T) {
	const capacity = 3 << 20
	m := testMachines[1]
	_, vmdk := makeVMDK(t, capacity, 512<<10, "streamOptimized")
	first := writeOVA(t, m, vmdk, capacity, testMtime, nil)

	src, err := os.ReadFile(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(t.TempDir(), "elsewhere.vmdk")
	if err := os.WriteFile(moved, src, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(moved, time.Unix(1, 0), time.Unix(2, 0)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // a clock leak would show in a new second
	second := writeOVA(t, m, moved, capacity, testMtime, nil)
	a, b := mustRead(t, first), mustRead(t, second)
	if !bytes.Equal(a, b) {
		t.Errorf("two OVAs of the same inputs differ")
	}

	// and it does depend on them.
	for name, path := range map[string]string{
		"mtime":    writeOVA(t, m, vmdk, capacity, testMtime+1, nil),
		"Firmware": writeOVA(t, Machine{m.Name, m.CPUs, m.MemoryMiB, "bios"}, vmdk, capacity, testMtime, nil),
	} {
		if bytes.Equal(mustRead(t, path), a) {
			t.Errorf("changing %s did not change the OVA", name)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProgress(t *testing.T) {
	if progressStep != 64<<20 {
		t.Errorf("progressStep is %d, want 64 MiB", progressStep)
	}
	defer func(s int64) { progressStep = s }(progressStep)
	progressStep = 1 << 20

	const capacity = 8 << 20
	_, vmdk := makeVMDK(t, capacity, 5<<20, "streamOptimized")
	fi, err := os.Stat(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	writeOVA(t, testMachines[0], vmdk, capacity, testMtime, func(n int64) { got = append(got, n) })
	if len(got) < 4 || got[len(got)-1] != fi.Size() {
		t.Fatalf("progress %v: want several reports ending at the disk's %d bytes", got, fi.Size())
	}
	for i := 1; i < len(got)-1; i++ {
		if got[i]-got[i-1] < progressStep {
			t.Errorf("progress %v: %d then %d, less than %d apart", got, got[i-1], got[i], progressStep)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := testMachines[0]
	for _, m := range testMachines {
		if err := m.Validate(); err != nil {
			t.Errorf("%+v: %v", m, err)
		}
	}
	for _, tc := range []struct {
		field string
		edit  func(*Machine)
	}{
		{"Name", func(m *Machine) { m.Name = "" }},
		{"Name", func(m *Machine) { m.Name = ".hidden" }},
		{"Name", func(m *Machine) { m.Name = "a/b" }},
		{"Name", func(m *Machine) { m.Name = "two words" }},
		{"Name", func(m *Machine) { m.Name = "ünïcode" }},
		{"Name", func(m *Machine) { m.Name = strings.Repeat("n", MaxNameLen+1) }},
		{"CPUs", func(m *Machine) { m.CPUs = 0 }},
		{"CPUs", func(m *Machine) { m.CPUs = MaxCPUs + 1 }},
		{"MemoryMiB", func(m *Machine) { m.MemoryMiB = MinMemoryMiB - 1 }},
		{"MemoryMiB", func(m *Machine) { m.MemoryMiB = MaxMemoryMiB + 1 }},
		{"Firmware", func(m *Machine) { m.Firmware = "" }},
		{"Firmware", func(m *Machine) { m.Firmware = "EFI" }},
	} {
		m := ok
		tc.edit(&m)
		_, derr := Descriptor(m, 512, 512)
		for _, err := range []error{m.Validate(), derr, Write(io.Discard, m, nil, 512, 0, nil)} {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), "Machine."+tc.field) || fe.Allowed == "" {
				t.Errorf("%+v: error %v, want a FieldError naming %s and what is allowed", m, err, tc.field)
			}
		}
	}
}

func TestWriteRefuses(t *testing.T) {
	const capacity = 2 << 20
	raw, stream := makeVMDK(t, capacity, 4096, "streamOptimized")
	_, sparse := makeVMDK(t, capacity, 4096, "monolithicSparse")
	m := testMachines[0]
	for _, tc := range []struct {
		disk     string
		capacity int64
		mtime    int64
		want     string
	}{
		{raw, capacity, 0, "not a VMDK"},
		{sparse, capacity, 0, "not stream-optimized"},
		{stream, capacity + 512, 0, "not the capacity given"},
		{stream, capacity, -1, "mtime"},
		{stream, capacity, 1 << 33, "mtime"},
		{t.TempDir(), capacity, 0, "not a regular file"},
	} {
		f, err := os.Open(tc.disk)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err = Write(&out, m, f, tc.capacity, tc.mtime, nil)
		f.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s, capacity %d, mtime %d: %v, want an error saying %q", filepath.Base(tc.disk), tc.capacity, tc.mtime, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%s: %d bytes written before the error", filepath.Base(tc.disk), out.Len())
		}
	}
}
