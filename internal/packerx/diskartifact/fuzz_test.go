package diskartifact

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/qemuimg"
)

// FuzzFind builds an artifact from the input and finds its disk. files is
// one file a line: a kind letter (r regular with head as its first bytes,
// e empty, d directory, f FIFO, l symbolic link to the first file, m
// missing) and a base name. state is a JSON object of state keys; a string
// "$N" in it stands for the Nth file's path, and a diskPaths list is
// passed as []string when head is odd-sized (builders use both types).
// Seeds: the state Packer's qemu builder (diskName, diskType, diskPaths,
// domainType, diskSize), our builder and other post-processors hand on,
// and the container headers qemu-img writes (qcow2, vhdx, vmdk, vdi, vpc).
// Invariants: Find returns an error, or one of the artifact's files
// verbatim that is a regular file, with a format qemuimg knows and a
// domain type.
func FuzzFind(f *testing.F) {
	vdi := make([]byte, 68)
	copy(vdi[64:], []byte{0x7f, 0x10, 0xda, 0xbe})
	for _, c := range []struct {
		files, state string
		head         []byte
	}{
		{"routput-qemu.qcow2\nrpacker-output.log", `{"diskName":"output-qemu.qcow2","diskType":"qcow2","domainType":"kvm","diskSize":"10240M","diskPaths":["$0"]}`, []byte("QFI\xfb\x00\x00\x00\x03")},
		{"rnixos.vhdx", `{"diskName":"nixos.vhdx","diskType":"vhdx","diskSize":"327M","generated_data":{"ImageMode":"install"}}`, []byte("vhdxfile")},
		{"rdisk.vmdk", `{}`, []byte("KDMV\x01\x00\x00\x00")},
		{"rdisk.vdi\nldisk.raw", `{"diskPaths":["$1"]}`, vdi},
		{"mgone.raw\nrdisk.vhd", `{"diskName":"../x/disk.vhd"}`, []byte("conectix")},
		{"fdisk.img\nddir.qcow2", `{"diskPaths":["$0","$1"],"diskType":7}`, nil},
		{"enotes.txt", `{"diskPaths":["/etc/passwd"],"diskType":"vhd"}`, nil},
	} {
		f.Add(c.files, c.state, c.head)
	}
	// Files go to a tmpfs when there is one: a disk's metadata writes
	// made executions a hundred times slower.
	base := os.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() && syscall.Access("/dev/shm", 2) == nil {
		base = "/dev/shm"
	}
	f.Fuzz(func(t *testing.T, names, state string, head []byte) {
		dir, err := os.MkdirTemp(base, "diskartifact-fuzz-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		var list []string
		for i, line := range strings.Split(names, "\n") {
			if i == 8 || len(line) < 2 {
				break
			}
			base := filepath.Base(line[1:])
			if base == "." || base == ".." || base == "/" || len(base) > 100 || strings.ContainsRune(base, 0) {
				continue
			}
			p := filepath.Join(dir, base)
			if _, err := os.Lstat(p); err == nil {
				// A name used twice keeps its first kind (writing to a
				// FIFO made first would wait for a reader forever).
				list = append(list, p)
				continue
			}
			var err error
			switch line[0] {
			case 'r':
				err = os.WriteFile(p, append(head[:len(head):len(head)], make([]byte, 1024)...), 0o644)
			case 'e':
				err = os.WriteFile(p, nil, 0o644)
			case 'd':
				err = os.Mkdir(p, 0o755)
			case 'f':
				err = syscall.Mkfifo(p, 0o644)
			case 'l':
				if len(list) > 0 {
					err = os.Symlink(list[0], p)
				}
			case 'm':
			default:
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			list = append(list, p)
		}
		var st map[string]interface{}
		if json.Unmarshal([]byte(state), &st) != nil {
			st = nil
		}
		for k, v := range st {
			st[k] = expand(v, list, len(head)%2 == 1 && k == "diskPaths")
		}
		a := files{list: list, state: st}
		d, err := Find(a)
		if err != nil {
			return
		}
		own := false
		for _, p := range list {
			own = own || p == d.Path
		}
		if !own {
			t.Fatalf("Find returned %q, not one of %q", d.Path, list)
		}
		if fi, err := os.Stat(d.Path); err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("Find returned %q: %v, not a regular file", d.Path, err)
		}
		if _, ok := qemuimg.FormatByQemuName(d.Format.Qemu); !ok || d.State.DomainType == "" {
			t.Fatalf("Find returned %+v", d)
		}
	})
}

// expand replaces "$N" by the Nth file's path.
func expand(v interface{}, list []string, asStrings bool) interface{} {
	switch x := v.(type) {
	case string:
		if n, err := strconv.Atoi(strings.TrimPrefix(x, "$")); err == nil && strings.HasPrefix(x, "$") && n >= 0 && n < len(list) {
			return list[n]
		}
		return x
	case []interface{}:
		var ss []string
		for i := range x {
			x[i] = expand(x[i], list, false)
			if s, ok := x[i].(string); ok {
				ss = append(ss, s)
			}
		}
		if asStrings {
			return ss
		}
	}
	return v
}
