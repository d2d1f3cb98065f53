package agent

import "testing"

func TestParseOptions(t *testing.T) {
	flags, data := parseOptions("ro,nosuid,umask=077,defaults,rw,noexec,iocharset=ascii")
	if flags != mountFlags["nosuid"].flag|mountFlags["noexec"].flag || data != "umask=077,iocharset=ascii" {
		t.Errorf("flags %#x data %q", flags, data)
	}
	if got := unescapeMountinfo(`/a\040b\134c`); got != `/a b\c` {
		t.Errorf("unescape: %q", got)
	}
}
