package imagecheck

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// CloudImage checks img, made in the named cloud format (azure, gce,
// vmdk-stream, ova), against each cloud's documented rule, byte-wise and
// with the real tools (qemu-img, GNU tar, xmllint when installed), and
// checks that the disk it holds reads back equal to the raw image raw.
// It returns the virtual size of the disk inside.
func CloudImage(t testing.TB, format, img, raw string) int64 {
	t.Helper()
	RequireTool(t, "qemu-img", "tar")
	switch format {
	case "azure":
		return checkAzure(t, img, raw)
	case "gce":
		return checkGCE(t, img, raw)
	case "vmdk-stream":
		return checkStreamVMDK(t, img, raw)
	case "ova":
		return checkOVA(t, img, raw)
	}
	t.Fatalf("no check for format %q", format)
	return 0
}

func qemuImg(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sameDisk: qemu-img reads the same data from both (a larger one's tail zero).
func sameDisk(t testing.TB, raw, img, format string) {
	t.Helper()
	if out := qemuImg(t, "compare", "-f", "raw", "-F", format, raw, img); !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare %s: %s", img, out)
	}
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// Azure: a fixed VHD; the file exactly N MiB + 512 (N ≥ 20); the footer's
// cookie "conectix", disk type 2 (fixed), data offset all ones, original
// and current size N MiB, a valid checksum.
func checkAzure(t testing.TB, img, raw string) int64 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	n := fi.Size() - 512
	if n%(1<<20) != 0 || n < 20<<20 {
		t.Errorf("azure: file is %d bytes, not a whole number (≥ 20) of MiB + 512", fi.Size())
	}
	ft := make([]byte, 512)
	if _, err := f.ReadAt(ft, n); err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	var sum uint32
	for i, c := range ft {
		if i < 64 || i >= 68 {
			sum += uint32(c)
		}
	}
	if string(ft[:8]) != "conectix" || be.Uint32(ft[60:]) != 2 || be.Uint64(ft[16:]) != ^uint64(0) ||
		be.Uint64(ft[40:]) != uint64(n) || be.Uint64(ft[48:]) != uint64(n) || be.Uint32(ft[64:]) != ^sum {
		t.Errorf("azure: footer % x", ft[:96])
	}
	if want := fmt.Sprintf("(%d bytes)", n); !strings.Contains(qemuImg(t, "info", "-f", "vpc", img), want) {
		t.Errorf("azure: qemu-img info -f vpc does not say %s", want)
	}
	if a := allocated(t, img); a > allocated(t, raw)+1<<20 {
		t.Errorf("azure: %d bytes allocated, the raw image %d: not sparse", a, allocated(t, raw))
	}
	sameDisk(t, raw, img, "vpc")
	return n
}

// GCE: a gzip-compressed tar holding disk.raw alone, in GNU tar's oldgnu
// format, stored sparse, of a whole number of GiB.
func checkGCE(t testing.TB, img, raw string) int64 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		t.Fatalf("gce: %v", err)
	}
	hdr := make([]byte, 512)
	if _, err := io.ReadFull(zr, hdr); err != nil {
		t.Fatalf("gce: %v", err)
	}
	if name := string(bytes.TrimRight(hdr[:100], "\x00")); name != "disk.raw" {
		t.Errorf("gce: first member %q, want disk.raw", name)
	}
	if string(hdr[257:265]) != "ustar  \x00" {
		t.Errorf("gce: magic %q, want GNU's \"ustar  \\x00\" (oldgnu)", hdr[257:265])
	}
	if hdr[156] != 'S' {
		t.Errorf("gce: type flag %q, want 'S' (old GNU sparse)", hdr[156])
	}
	list, err := exec.Command("tar", "-tzf", img).Output()
	if err != nil || strings.TrimSpace(string(list)) != "disk.raw" {
		t.Errorf("gce: tar -tzf lists %q (%v), want disk.raw alone", list, err)
	}
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xSzf", img, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("gce: tar -xSzf: %v\n%s", err, out)
	}
	disk := filepath.Join(dir, "disk.raw")
	fi, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size()%(1<<30) != 0 {
		t.Errorf("gce: disk.raw is %d bytes, not a whole number of GiB", fi.Size())
	}
	if a := allocated(t, disk); a > allocated(t, raw)+1<<20 {
		t.Errorf("gce: disk.raw extracts with %d bytes allocated, the raw image has %d: not stored sparse", a, allocated(t, raw))
	}
	sameDisk(t, raw, disk, "raw")
	return fi.Size()
}

// vmdk-stream: a VMDK whose create type is streamOptimized, that
// qemu-img checks.
func checkStreamVMDK(t testing.TB, img, raw string) int64 {
	t.Helper()
	info := qemuImg(t, "info", "--output=json", "-f", "vmdk", img)
	var v struct {
		VirtualSize int64 `json:"virtual-size"`
		Specific    struct {
			Data struct {
				CreateType string `json:"create-type"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		t.Fatalf("vmdk: %v", err)
	}
	if v.Specific.Data.CreateType != "streamOptimized" {
		t.Errorf("vmdk: create type %q, want streamOptimized", v.Specific.Data.CreateType)
	}
	qemuImg(t, "check", "-f", "vmdk", img)
	sameDisk(t, raw, img, "vmdk")
	return v.VirtualSize
}

// OVA: a ustar tar of the OVF descriptor first, then the disk (a
// stream-optimised VMDK) and a manifest whose SHA256 lines match; the
// descriptor well-formed, naming the disk file with its size and the
// disk's capacity.
func checkOVA(t testing.TB, img, raw string) int64 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	var names []string
	sums := map[string]string{}
	sizes := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("ova: %v", err)
		}
		if h.Format != tar.FormatUSTAR || h.Typeflag != tar.TypeReg || strings.Contains(h.Name, "/") {
			t.Errorf("ova: member %q: format %v, type %q; want plain ustar files", h.Name, h.Format, h.Typeflag)
		}
		names = append(names, h.Name)
		out, err := os.Create(filepath.Join(dir, filepath.Base(h.Name)))
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.New()
		n, err := io.Copy(io.MultiWriter(out, s), tr)
		out.Close()
		if err != nil {
			t.Fatal(err)
		}
		sums[h.Name], sizes[h.Name] = hex.EncodeToString(s.Sum(nil)), n
	}
	if len(names) != 3 || !strings.HasSuffix(names[0], ".ovf") || !strings.HasSuffix(names[1], ".vmdk") || !strings.HasSuffix(names[2], ".mf") {
		t.Fatalf("ova: members %q, want the .ovf, .vmdk and .mf in that order", names)
	}
	ovf, vmdk, mf := names[0], names[1], names[2]
	manifest, _ := os.ReadFile(filepath.Join(dir, mf))
	for _, name := range []string{ovf, vmdk} {
		if line := fmt.Sprintf("SHA256(%s)= %s\n", name, sums[name]); !strings.Contains(string(manifest), line) {
			t.Errorf("ova: manifest lacks %q:\n%s", line, manifest)
		}
	}
	desc, _ := os.ReadFile(filepath.Join(dir, ovf))
	if _, err := exec.LookPath("xmllint"); err == nil {
		if out, err := exec.Command("xmllint", "--noout", filepath.Join(dir, ovf)).CombinedOutput(); err != nil {
			t.Errorf("ova: xmllint: %v\n%s", err, out)
		}
	}
	var env struct {
		XMLName xml.Name
		Files   []struct {
			Href string `xml:"href,attr"`
			ID   string `xml:"id,attr"`
			Size string `xml:"size,attr"`
		} `xml:"References>File"`
		Disks []struct {
			Capacity string `xml:"capacity,attr"`
			FileRef  string `xml:"fileRef,attr"`
			Format   string `xml:"format,attr"`
		} `xml:"DiskSection>Disk"`
	}
	if err := xml.Unmarshal(desc, &env); err != nil {
		t.Fatalf("ova: descriptor: %v", err)
	}
	if env.XMLName.Space != "http://schemas.dmtf.org/ovf/envelope/1" || env.XMLName.Local != "Envelope" {
		t.Errorf("ova: root element %v, want the OVF 1 Envelope", env.XMLName)
	}
	if len(env.Files) != 1 || env.Files[0].Href != vmdk || env.Files[0].Size != strconv.FormatInt(sizes[vmdk], 10) {
		t.Errorf("ova: References %+v; want %s of %d bytes", env.Files, vmdk, sizes[vmdk])
	}
	size := checkStreamVMDK(t, filepath.Join(dir, vmdk), raw)
	if len(env.Disks) != 1 || env.Disks[0].Capacity != strconv.FormatInt(size, 10) || len(env.Files) == 1 && env.Disks[0].FileRef != env.Files[0].ID ||
		!strings.HasSuffix(env.Disks[0].Format, "#streamOptimized") {
		t.Errorf("ova: DiskSection %+v; want capacity %d of the file, stream-optimised", env.Disks, size)
	}
	return size
}
