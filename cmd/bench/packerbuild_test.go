package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakePacker writes a script standing in for packer: it reports whether it
// has a terminal and a controlling one, runs a "plugin" (sleep under the
// plugin's command name) and writes the image.
func fakePacker(t *testing.T) (packer, image string) {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("sleep not found")
	}
	dir := t.TempDir()
	plugin := filepath.Join(dir, "packer-plugin-nixos_v0.0.0_x5.0_linux_amd64")
	if err := os.Symlink(sleep, plugin); err != nil {
		t.Fatal(err)
	}
	image = filepath.Join(dir, "nixos.img")
	packer = filepath.Join(dir, "packer")
	script := `#!/bin/sh
echo "args: $*"
if [ -t 1 ]; then echo "stdout: terminal TERM=$TERM"; else echo "stdout: pipe"; fi
if (exec 3</dev/tty) 2>/dev/null; then echo "ctty: yes"; else echo "ctty: no"; fi
if [ "$(cut -d' ' -f6 /proc/$$/stat)" = $$ ]; then echo "session leader: yes"; fi
"` + plugin + `" 0.3
echo data > "` + image + `"
`
	if err := os.WriteFile(packer, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return packer, image
}

// The terminal mode must give packer a controlling terminal (else Packer
// draws no progress bar), the plain mode none even when the bench itself
// runs in one (a session of its own, whose leader it is); both must find the
// plugin's process and its peak RSS.
func TestRunPackerUIModes(t *testing.T) {
	packer, image := fakePacker(t)
	for _, tc := range []struct {
		ui   uiMode
		want []string
	}{
		{uiTerminal, []string{"args: build tmpl", "stdout: terminal TERM=xterm-256color", "ctty: yes", "session leader: yes"}},
		{uiPlain, []string{"args: build -color=false tmpl", "stdout: pipe", "ctty: no", "session leader: yes"}},
	} {
		os.Remove(image)
		res, err := runPacker(context.Background(), packerRun{packer: packer, env: os.Environ(), dir: t.TempDir(),
			args: []string{"tmpl"}, ui: tc.ui, images: []string{image}, limit: time.Minute})
		if err != nil {
			t.Fatalf("%s: %v\n%s", tc.ui, err, res.out)
		}
		out := strings.ReplaceAll(string(res.out), "\r\n", "\n")
		for _, w := range tc.want {
			if !strings.Contains(out, w+"\n") {
				t.Errorf("%s: output lacks %q:\n%s", tc.ui, w, out)
			}
		}
		if res.pluginSeen != 1 || res.pluginRSS <= 0 {
			t.Errorf("%s: plugin seen %d times, peak RSS %d", tc.ui, res.pluginSeen, res.pluginRSS)
		}
		if res.elapsed < 300*time.Millisecond {
			t.Errorf("%s: elapsed %v, shorter than the plugin ran", tc.ui, res.elapsed)
		}
	}
}

// A build whose image is missing fails, rather than timing nothing.
func TestRunPackerMissingImage(t *testing.T) {
	packer, image := fakePacker(t)
	_, err := runPacker(context.Background(), packerRun{packer: packer, env: os.Environ(), dir: t.TempDir(),
		ui: uiPlain, images: []string{image + ".missing"}, limit: time.Minute})
	if err == nil {
		t.Error("no error for a missing image")
	}
}

func TestRunPackerTimeout(t *testing.T) {
	packer, image := fakePacker(t)
	start := time.Now()
	_, err := runPacker(context.Background(), packerRun{packer: packer, env: os.Environ(), dir: t.TempDir(),
		ui: uiTerminal, images: []string{image}, limit: 100 * time.Millisecond})
	if err != context.DeadlineExceeded {
		t.Errorf("err = %v, want the deadline", err)
	}
	if el := time.Since(start); el > drainWait {
		t.Errorf("a timed-out build took %v to return", el)
	}
}

// The templates must parse: packer fmt reads HCL without any plugin.
func TestTemplatesParse(t *testing.T) {
	packer := defaultPacker()
	if _, err := exec.LookPath(packer); err != nil {
		t.Skipf("packer not found: %v", err)
	}
	tmpl := storeSource("a", []string{"/nix/store/x-a", "/nix/store/y-b"}, "none", 1500, "/tmp/out a") + "\n" +
		installSource("b", "/nix/store/z-system", "/tmp/out-b") + "\n" + buildBlock("a", "b")
	for _, want := range []string{`store_paths          = ["/nix/store/x-a", "/nix/store/y-b"]`, `additional_space     = "2K"`,
		`partition_table_type = "none"`, `output_directory     = "/tmp/out a"`, `sources = ["source.nixos-image.a", "source.nixos-image.b"]`} {
		if !strings.Contains(tmpl, want) {
			t.Errorf("template lacks %s:\n%s", want, tmpl)
		}
	}
	cmd := exec.Command(packer, "fmt", "-check", "-")
	cmd.Stdin = strings.NewReader(tmpl)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("packer fmt -check: %v\n%s\n%s", err, out, tmpl)
	}
}
