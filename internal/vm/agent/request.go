package agent

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// decodeRequest parses a 'Q' frame's payload and checks what its op needs,
// so that handle and the System only ever see complete requests: a known
// op, its fields present, an upload's size not negative, its mode within
// the permission bits (07777) and its owner a real uid and gid (chown's -1,
// "unchanged", is not one).
func decodeRequest(payload []byte) (*protocol.Request, error) {
	var req protocol.Request
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, fmt.Errorf("bad request: %v", err)
	}
	missing := func(what string) error { return fmt.Errorf("%s: missing %s", req.Op, what) }
	switch req.Op {
	case protocol.OpHello, protocol.OpSync, protocol.OpPoweroff:
	case protocol.OpMount:
		if req.Mount == nil {
			return nil, missing("mount")
		}
	case protocol.OpBindSystem:
		if req.Bind == nil {
			return nil, missing("bind")
		}
	case protocol.OpExec:
		if req.Exec == nil || len(req.Exec.Argv) == 0 {
			return nil, missing("exec.argv")
		}
	case protocol.OpUpload:
		u := req.Upload
		switch {
		case u == nil || u.Path == "":
			return nil, missing("upload.path")
		case u.Size < 0:
			return nil, fmt.Errorf("upload: negative size")
		case u.Mode&^0o7777 != 0:
			return nil, fmt.Errorf("upload: mode %o has bits beyond 07777", u.Mode)
		case !validID(u.Uid) || !validID(u.Gid):
			return nil, fmt.Errorf("upload: owner %d:%d is not a uid and gid", u.Uid, u.Gid)
		}
	case protocol.OpDownload, protocol.OpRemove, protocol.OpUnmount:
		if req.Path == "" {
			return nil, missing("path")
		}
	default:
		return nil, fmt.Errorf("unknown op %q", req.Op)
	}
	return &req, nil
}

// validID is a uid or gid chown takes as one: 0 to 2^32-2 (2^32-1 is -1).
func validID(id int) bool { return id >= 0 && int64(id) < math.MaxUint32 }
