package hosttree

import (
	"fmt"
	"io"
	"os"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/ext4"
)

// Writer streams the tree into an ext4.Writer. Progress, if set, is called
// with the byte count of each file once its data is written.
func Writer(w *ext4.Writer, progress func(n int64)) Target {
	return &writerTarget{w: w, progress: progress}
}

type writerTarget struct {
	w        *ext4.Writer
	progress func(int64)
}

func (t *writerTarget) Mkdir(h ext4.Header) error                  { return t.w.Mkdir(h) }
func (t *writerTarget) Symlink(h ext4.Header, target string) error { return t.w.Symlink(h, target) }
func (t *writerTarget) Link(name string, ino uint32) error         { return t.w.Link(name, ino) }

func (t *writerTarget) File(h ext4.Header, src string) (uint32, error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return t.copy(h, f, src)
}

func (t *writerTarget) FileFrom(h ext4.Header, r io.Reader) (uint32, error) {
	return t.copy(h, r, h.Name)
}

func (t *writerTarget) copy(h ext4.Header, r io.Reader, what string) (uint32, error) {
	fw, err := t.w.Create(h)
	if err != nil {
		return 0, err
	}
	n, err := fw.ReadFrom(r)
	if err != nil {
		return 0, err
	}
	if n != h.Size {
		return 0, fmt.Errorf("%s changed while it was copied: read %d of %d bytes", what, n, h.Size)
	}
	if t.progress != nil {
		t.progress(n)
	}
	return fw.Inode(), nil
}

func (t *writerTarget) Bytes(h ext4.Header, data []byte) error {
	fw, err := t.w.Create(h)
	if err != nil {
		return err
	}
	if _, err := fw.Write(data); err != nil {
		return err
	}
	if t.progress != nil {
		t.progress(int64(len(data)))
	}
	return nil
}

// Sizer measures the tree with an ext4.Sizer, reading no file data.
func Sizer(s *ext4.Sizer) Target { return sizerTarget{s} }

type sizerTarget struct{ s *ext4.Sizer }

func (t sizerTarget) Mkdir(h ext4.Header) error                           { return t.s.Mkdir(h) }
func (t sizerTarget) Symlink(h ext4.Header, target string) error          { return t.s.Symlink(h, target) }
func (t sizerTarget) Link(name string, ino uint32) error                  { return t.s.Link(name, ino) }
func (t sizerTarget) File(h ext4.Header, _ string) (uint32, error)        { return t.s.Create(h) }
func (t sizerTarget) FileFrom(h ext4.Header, _ io.Reader) (uint32, error) { return t.s.Create(h) }

func (t sizerTarget) Bytes(h ext4.Header, _ []byte) error {
	_, err := t.s.Create(h)
	return err
}
