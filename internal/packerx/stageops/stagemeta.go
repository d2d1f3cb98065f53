// Package stageops is what a provisioner tells a store-only build's
// staging area beyond file data: directories to make, their modes, and
// owners. packersdk.Communicator carries a file's mode but no owner and has
// no mkdir, and a store-only image has no system to run chmod or chown in,
// so the operations travel as one JSON document uploaded to Path. It also
// names how the builder tells provisioners which mode it is in.
package stageops

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
)

// The builder says which mode it is in through the generated data
// provisioners receive: GeneratedKey holds StoreOnly or Install.
const (
	GeneratedKey = "ImageMode"
	StoreOnly    = "store-only"
	Install      = "install"
)

// Path is the upload destination the store-only communicator takes as
// operations, not as a file for the image.
const Path = "/.nixos-image-stage-ops.json"

// Op is one operation on an image path, applied in order: Mkdir, then Mode,
// then Owner.
type Op struct {
	Path  string `json:"path"`
	Mkdir bool   `json:"mkdir,omitempty"` // make the directory and its parents (0755)
	// Mode is st_mode permission bits, with 04000 setuid, 02000 setgid and
	// 01000 sticky, as chmod takes them.
	Mode *uint32 `json:"mode,omitempty"`
	// Owner is {uid, gid} for Path and everything under it, as chown -R.
	Owner *[2]uint32 `json:"owner,omitempty"`
}

// Encode is the document for ops.
func Encode(ops []Op) []byte {
	b, err := json.Marshal(struct {
		Ops []Op `json:"ops"`
	}{ops})
	if err != nil {
		panic(err) // plain structs always marshal
	}
	return b
}

// MaxBytes bounds a document: each Op is a few dozen bytes, and a
// provisioner sends one document per directory tree it stages.
const MaxBytes = 64 << 20

// Decode parses a document, refusing paths that are not absolute and clean
// (the store-only communicator joins them to its staging directory), or
// that hold a NUL, and modes with bits beyond 07777.
func Decode(b []byte) ([]Op, error) {
	if len(b) > MaxBytes {
		return nil, fmt.Errorf("staging operations: %d bytes, more than the limit of %d", len(b), MaxBytes)
	}
	var doc struct {
		Ops []Op `json:"ops"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("staging operations: %w", err)
	}
	for _, op := range doc.Ops {
		if op.Path == "" || op.Path[0] != '/' || path.Clean(op.Path) != op.Path || op.Path == "/" || strings.IndexByte(op.Path, 0) >= 0 {
			return nil, fmt.Errorf("staging operations: %q is not a clean absolute path below /", op.Path)
		}
		if op.Mode != nil && *op.Mode&^0o7777 != 0 {
			return nil, fmt.Errorf("staging operations: %s: mode %o has bits beyond 07777", op.Path, *op.Mode)
		}
	}
	return doc.Ops, nil
}
