package contents

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/fs/unixmode"
)

// fixture makes files/motd, files/a.conf, files/b.conf and files/dir/x.
func fixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"motd", "a.conf", "b.conf", "dir/x"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func prepare(t *testing.T, raw map[string]interface{}) (*Config, error) {
	t.Helper()
	var c Config
	err := c.Prepare(raw)
	return &c, err
}

func str(s string) *string { return &s }

func TestPrepareValid(t *testing.T) {
	dir := fixture(t)
	c, err := prepare(t, map[string]interface{}{
		"config_file": filepath.Join(dir, "motd"),
		"content": []map[string]interface{}{
			{"source": filepath.Join(dir, "motd"), "target": "/etc/motd", "mode": "0640", "user": "alice", "group": "users"},
			{"inline": "hello\n", "target": "/etc/greeting"},
			{"source": filepath.Join(dir, "dir"), "target": "/srv/dir"},
			{"source": filepath.Join(dir, "*.conf"), "target": "/etc/conf"},
			{"source": filepath.Join(dir, "a.*"), "target": "/etc/single/"},
			{"source": filepath.Join(dir, "b.*"), "target": "/etc/b.conf"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cs := c.Contents
	if !cs[0].hasMode || cs[0].mode != 0o640 {
		t.Errorf("mode: %v %o", cs[0].hasMode, cs[0].mode)
	}
	if got := cs[1].Inline; got == nil || *got != "hello\n" {
		t.Errorf("inline: %v", got)
	}
	if got := strings.Join(cs[3].targets(), " "); got != "/etc/conf/a.conf /etc/conf/b.conf" {
		t.Errorf("glob targets: %s", got)
	}
	if got := strings.Join(cs[4].targets(), " "); got != "/etc/single/a.conf" {
		t.Errorf("glob into dir targets: %s", got)
	}
	if got := strings.Join(cs[5].targets(), " "); got != "/etc/b.conf" {
		t.Errorf("single-match glob targets: %s", got)
	}
}

func TestPrepareModes(t *testing.T) {
	for s, want := range map[string]os.FileMode{"0000": 0, "0644": 0o644, "4755": 0o755 | os.ModeSetuid, "07777": 0o777 | os.ModeSetuid | os.ModeSetgid | os.ModeSticky} {
		c, err := prepare(t, map[string]interface{}{"content": []map[string]interface{}{{"inline": "x", "target": "/x", "mode": s}}})
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		if got := c.Contents[0].mode; got != want {
			t.Errorf("%s: %v, want %v", s, got, want)
		}
		if got := fmt.Sprintf("%04o", unixmode.Perm(want)); strings.TrimLeft(got, "0") != strings.TrimLeft(s, "0") {
			t.Errorf("chmod argument for %v = %s, want %s", want, got, s)
		}
	}
}

func TestPrepareErrors(t *testing.T) {
	dir := fixture(t)
	motd := filepath.Join(dir, "motd")
	for _, tc := range []struct {
		name    string
		content []map[string]interface{}
		extra   map[string]interface{}
		want    []string
	}{
		{"both", []map[string]interface{}{{"source": motd, "inline": "x", "target": "/a"}},
			nil, []string{"content[0]: source and inline are both set; want exactly one of them"}},
		{"neither", []map[string]interface{}{{"target": "/a"}},
			nil, []string{"content[0]: neither source nor inline is set; want exactly one of them"}},
		{"missing source", []map[string]interface{}{{"source": filepath.Join(dir, "nope"), "target": "/a"}},
			nil, []string{"content[0].source: ", "no such file or directory; want an existing file or directory"}},
		{"glob no match", []map[string]interface{}{{"source": filepath.Join(dir, "*.nope"), "target": "/a"}},
			nil, []string{"content[0].source: the glob pattern", "matches nothing"}},
		{"bad glob", []map[string]interface{}{{"source": filepath.Join(dir, "[x"), "target": "/a"}},
			nil, []string{"content[0].source: ", "is not a valid glob pattern"}},
		{"no target", []map[string]interface{}{{"inline": "x"}},
			nil, []string{"content[0].target: not set; want an absolute path"}},
		{"relative target", []map[string]interface{}{{"inline": "x", "target": "etc/motd"}},
			nil, []string{`content[0].target: "etc/motd" is not absolute`}},
		{"dotdot target", []map[string]interface{}{{"inline": "x", "target": "/etc/../root/x"}},
			nil, []string{`content[0].target: "/etc/../root/x" has a ".." component`}},
		{"root target", []map[string]interface{}{{"inline": "x", "target": "/"}},
			nil, []string{`content[0].target: "/" is the root directory`}},
		{"store target", []map[string]interface{}{{"inline": "x", "target": "/nix/store/abc-x/y"}},
			nil, []string{`content[0].target: "/nix/store/abc-x/y" is in the Nix store`}},
		{"store itself", []map[string]interface{}{{"inline": "x", "target": "/nix//store/"}},
			nil, []string{`content[0].target: "/nix//store/" is in the Nix store`}},
		{"bad mode digits", []map[string]interface{}{{"inline": "x", "target": "/a", "mode": "0698"}},
			nil, []string{`content[0].mode: "0698" is not an octal mode; want a string from "0000" to "07777"`}},
		{"mode too big", []map[string]interface{}{{"inline": "x", "target": "/a", "mode": "17777"}},
			nil, []string{`content[0].mode: "17777" is not an octal mode`}},
		{"mode word", []map[string]interface{}{{"inline": "x", "target": "/a", "mode": "rw"}},
			nil, []string{`content[0].mode: "rw" is not an octal mode`}},
		{"user only", []map[string]interface{}{{"inline": "x", "target": "/a", "user": "alice"}},
			nil, []string{`content[0]: user "alice" and group "": set both or neither`}},
		{"group only", []map[string]interface{}{{"inline": "x", "target": "/a", "group": "users"}},
			nil, []string{`content[0]: user "" and group "users": set both or neither`}},
		{"duplicate", []map[string]interface{}{{"source": motd, "target": "/etc/motd"}, {"inline": "x", "target": "/etc//motd"}},
			nil, []string{`content[1] (inline): target "/etc/motd" is also written by content[0] (source "` + motd + `")`}},
		{"duplicate via glob", []map[string]interface{}{{"source": filepath.Join(dir, "*.conf"), "target": "/etc/"}, {"inline": "x", "target": "/etc/b.conf"}},
			nil, []string{`content[1] (inline): target "/etc/b.conf" is also written by content[0] (source "` + filepath.Join(dir, "*.conf") + `")`}},
		{"duplicate config_file", []map[string]interface{}{{"inline": "x", "target": "/etc/nixos/configuration.nix"}},
			map[string]interface{}{"config_file": motd}, []string{`content[0] (inline): target "/etc/nixos/configuration.nix" is also written by config_file (source "` + motd + `")`}},
		{"config_file missing", nil,
			map[string]interface{}{"config_file": filepath.Join(dir, "nope.nix")}, []string{"config_file: ", "want an existing regular file"}},
		{"config_file dir", nil,
			map[string]interface{}{"config_file": filepath.Join(dir, "dir")}, []string{"config_file: ", "is a directory; want a regular file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := map[string]interface{}{}
			if tc.content != nil {
				raw["content"] = tc.content
			}
			for k, v := range tc.extra {
				raw[k] = v
			}
			_, err := prepare(t, raw)
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// Every problem is reported at once.
func TestPrepareCollectsErrors(t *testing.T) {
	_, err := prepare(t, map[string]interface{}{"content": []map[string]interface{}{
		{"inline": "x", "target": "rel", "mode": "9", "user": "u"},
	}})
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{"content[0].target", "content[0].mode", "content[0]: user"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}
