package agentclient

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/vm/protocol"
)

// What the guest reports reaches Packer's UI; these bound it.
const (
	// maxText bounds one string (an error, the kernel's name): a line or
	// a short paragraph, as the agent writes them.
	maxText = 4 << 10
	// maxModuleErrors bounds Hello's list; an initrd has a few dozen
	// modules.
	maxModuleErrors = 256
)

// decodeResponse parses the 'R' payload answering op and checks the fields
// the host uses: the guest is not trusted. A reported failure becomes a
// *RemoteError. Strings are bounded and stripped of control characters
// (terminal escapes); a file's mode must be permission bits (07777), its
// owner a uid and gid, its size not negative; an exit status is 0..255.
func decodeResponse(op string, payload []byte) (*protocol.Response, error) {
	var resp protocol.Response
	if err := json.Unmarshal(payload, &resp); err != nil {
		return nil, fmt.Errorf("guest agent: %s: bad response: %w", op, err)
	}
	if resp.Error != "" {
		return nil, &RemoteError{Op: op, Message: text(resp.Error)}
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("guest agent: %s: bad response: "+format, append([]any{op}, a...)...)
	}
	switch op {
	case protocol.OpHello:
		h := resp.Hello
		if h == nil {
			return nil, bad("no hello info")
		}
		if h.Uptime < 0 {
			return nil, bad("uptime %v is negative", h.Uptime)
		}
		if len(h.ModuleErrors) > maxModuleErrors {
			h.ModuleErrors = append(h.ModuleErrors[:maxModuleErrors:maxModuleErrors], fmt.Sprintf("(%d more)", len(h.ModuleErrors)-maxModuleErrors))
		}
		h.Version, h.Kernel = text(h.Version), text(h.Kernel)
		for i := range h.ModuleErrors {
			h.ModuleErrors[i] = text(h.ModuleErrors[i])
		}
	case protocol.OpExec:
		e := resp.Exec
		if e == nil {
			return nil, bad("no result")
		}
		if e.ExitStatus < 0 || e.ExitStatus > 255 {
			return nil, bad("exit status %d is not 0..255", e.ExitStatus)
		}
		e.Signal = text(e.Signal)
	case protocol.OpDownload:
		f := resp.File
		switch {
		case f == nil:
			return nil, bad("no file info")
		case f.Mode&^0o7777 != 0:
			return nil, bad("mode %o has bits beyond 07777", f.Mode)
		case !validID(f.Uid) || !validID(f.Gid):
			return nil, bad("owner %d:%d is not a uid and gid", f.Uid, f.Gid)
		case f.Size < 0:
			return nil, bad("size %d is negative", f.Size)
		}
	}
	return &resp, nil
}

// validID is a uid or gid chown takes as one: 0 to 2^32-2 (2^32-1 is -1).
func validID(id int) bool { return id >= 0 && int64(id) < math.MaxUint32 }

// text makes a string from the guest fit for the user's terminal: at most
// maxText bytes, control and format characters (escape sequences,
// bidi overrides) and invalid UTF-8 replaced by '?', newlines and tabs
// kept.
func text(s string) string {
	cut := len(s) > maxText
	if cut {
		s = s[:maxText]
	}
	var b strings.Builder
	for i, r := range s {
		if r == utf8.RuneError && cut && len(s)-i < utf8.UTFMax && !utf8.FullRuneInString(s[i:]) {
			break // a rune the cut split
		}
		if (!unicode.IsPrint(r) && r != '\n' && r != '\t') || r == utf8.RuneError {
			r = '?'
		}
		b.WriteRune(r)
	}
	if cut {
		b.WriteString("…")
	}
	return b.String()
}
