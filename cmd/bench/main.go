// Command bench times the plugin against its peers and its targets and
// prints Markdown tables (run it as `make bench`): ours through a real
// `packer build` (the plugin over RPC, in a terminal and as CI runs it)
// against other writers on the same closures, with the floors (run.go,
// storebuild.go, floors.go), the plugin's peak RSS for a 64 MiB and a 4 GiB
// closure (closurerss.go), several sources in one `packer build` in parallel
// and one after another (parallel.go), the post-processing formats
// (convert.go) and install mode (install.go).
//
// Every contender runs as a separate process so that its peak RSS is its
// own: the child's rusage Maxrss, or for `packer build` the largest VmHWM of
// the plugin's processes (procwatch.go). Go contenders are this binary
// re-executed with the hidden subcommand in child.go; ours' in-process
// writer is one of them, a second column of the packer rows.
//
// The install section (-install, on by default, about a minute and a
// half) builds the test systems with the real `packer build` and the
// plugin built from this tree, and reports the install mode's phase times
// and the installer VM's peak RSS. `go run ./cmd/bench -fixtures=
// -convert= -rss=false -parallel=` runs it alone; -install=false leaves it
// out. Likewise -fixtures=, -rss=false, -parallel= and -convert= skip the
// other sections, -only and -ui pick contenders and UI modes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/packer-plugin-nixos/packer-plugin-nixos/internal/testkit/fixtures"
)

// epoch is every contender's idea of "now", so images do not depend on when
// the bench ran.
const epoch = 1

type config struct {
	runs      int
	fixtures  []string
	timeout   time.Duration
	extraPct  int
	tmp       string
	keep      bool
	fsck      bool
	only      map[string]bool
	install   bool
	convert   string // fixture whose image the post-processing section converts; "" skips it
	packer    string // the packer binary every `packer build` runs
	ui        []uiMode
	rss       bool   // the closure-size RSS section
	parallel  string // fixture of the parallel section's store-only sources; "" skips it
	parInst   bool   // the parallel section also builds an install-mode source
	copyPaths string // fixture of the copy-paths section ("" to skip)
	cache     string // fixture of the binary-cache section ("" to skip)
	plugin    *pluginSetup
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == childCmd {
		os.Exit(childMain(os.Args[2:]))
	}
	var (
		c        config
		fixList  = flag.String("fixtures", "debian,bench200k", "comma-separated fixtures (internal/testkit/fixtures/build.sh names)")
		scale    = flag.Bool("scale", false, "instead: run ours on generated bench200k-like trees and print time per entry")
		scaleN   = flag.String("scale-sizes", "50000,100000,200000", "file counts for -scale")
		onlyList = flag.String("only", "", "comma-separated contenders to run (default all): "+strings.Join(contenderKeys, ","))
		uiList   = flag.String("ui", "terminal,plain", "UI modes of every timed packer build of the tables (terminal: on a pty with Packer's progress bar; plain: as CI)")
	)
	flag.IntVar(&c.runs, "runs", 3, "runs per contender; the median is reported")
	flag.DurationVar(&c.timeout, "timeout", 300*time.Second, "per-run limit (go-diskfs is quadratic on large directories)")
	flag.IntVar(&c.extraPct, "extra", 10, "free space to plan for, in percent of the closure's bytes (every contender gets ours' size)")
	flag.StringVar(&c.tmp, "tmp", "", "scratch directory for staged trees and images (default: the system temp dir)")
	flag.BoolVar(&c.keep, "keep", false, "keep the scratch directory")
	flag.BoolVar(&c.fsck, "fsck", true, "check each writer's last image with e2fsck -fn (untimed)")
	flag.BoolVar(&c.install, "install", true, "also time install mode: packer build of "+strings.Join(installFixtures, " and ")+" in a TCG VM")
	flag.StringVar(&c.packer, "packer", defaultPacker(), "packer binary for every packer build")
	flag.BoolVar(&c.rss, "rss", true, "also compare the plugin's peak RSS through packer build of "+rssFixtures[0]+" and "+rssFixtures[1])
	flag.StringVar(&c.parallel, "parallel", "debian", "also time one packer build of several sources of this fixture (and -parallel-install) in parallel and one after another (\"\" to skip)")
	flag.BoolVar(&c.parInst, "parallel-install", true, "the -parallel build also installs "+installFixtures[0]+" (TCG)")
	flag.StringVar(&c.cache, "cache", "debian", "also time a store-only build of this fixture from a signed HTTP cache against nix copy --from plus a local build (\"\" to skip)")
	flag.StringVar(&c.copyPaths, "copy-paths", "debian", "also time ours' copy paths in-process on this fixture: the copy_file_range threshold swept, and reflink on a loop-mounted XFS (\"\" to skip)")
	flag.StringVar(&c.convert, "convert", "debian", "also time nixos-convert's formats and nixos-reproducible on this fixture's image (\"\" to skip)")
	flag.Parse()
	if c.runs < 1 {
		fatalf("-runs must be at least 1")
	}
	if *onlyList != "" {
		c.only = map[string]bool{}
		for _, k := range strings.Split(*onlyList, ",") {
			if !slices.Contains(contenderKeys, k) {
				fatalf("-only: unknown contender %q (known: %s)", k, strings.Join(contenderKeys, ","))
			}
			c.only[k] = true
		}
	}
	for _, u := range strings.Split(*uiList, ",") {
		if m := uiMode(u); slices.Contains(uiModes, m) && !slices.Contains(c.ui, m) {
			c.ui = append(c.ui, m)
		} else {
			fatalf("-ui: %q is not one of terminal, plain (or given twice)", u)
		}
	}
	c.plugin = &pluginSetup{}
	ctx := context.Background()

	scratch, err := os.MkdirTemp(c.tmp, "nixos-bench-")
	if err != nil {
		fatalf("%v", err)
	}
	c.tmp = scratch
	if !c.keep {
		defer removeAll(scratch)
	}

	if *scale {
		var sizes []int
		for _, s := range strings.Split(*scaleN, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 4 {
				fatalf("-scale-sizes: bad count %q", s)
			}
			sizes = append(sizes, n)
		}
		if err := runScale(ctx, c, sizes, os.Stdout); err != nil {
			fatalf("%v", err)
		}
		return
	}

	if *fixList != "" {
		c.fixtures = strings.Split(*fixList, ",")
	}
	var parts []string
	if len(c.fixtures) > 0 || c.rss || c.parallel != "" {
		parts = append(parts, "`packer build` against ext4 image writers")
	}
	if c.install {
		parts = append(parts, "install mode")
	}
	title := strings.Join(parts, " and ")
	if title == "" {
		title = "post-processing"
	}
	fmt.Fprintf(os.Stdout, "# %s, %s\n\n", title, machine())
	var verdicts []string
	for _, name := range c.fixtures {
		res, err := benchFixture(ctx, c, name)
		if err != nil {
			fatalf("fixture %s: %v", name, err)
		}
		printTable(os.Stdout, res)
		verdicts = append(verdicts, targets(res)...)
	}
	if c.rss {
		rows := benchClosureRSS(ctx, c)
		printClosureRSS(os.Stdout, c, rows)
		verdicts = append(verdicts, closureRSSTargets(rows)...)
	}
	if c.parallel != "" {
		p := benchParallel(ctx, c)
		printParallel(os.Stdout, c, p)
		verdicts = append(verdicts, parallelTargets(p)...)
	}
	// Install mode before the copy paths: their cold-cache runs empty the
	// page cache, and the first TCG boot after that reads QEMU and the
	// system from the disk.
	if c.install {
		rows := benchInstall(ctx, c)
		printInstallTable(os.Stdout, c, rows)
		verdicts = append(verdicts, installTargets(rows)...)
	}
	if c.copyPaths != "" {
		rows, scratchFS, err := benchCopyPaths(ctx, c, c.copyPaths)
		if err != nil {
			fatalf("copy paths: %v", err)
		}
		printCopyPaths(os.Stdout, c, c.copyPaths, scratchFS, rows)
	}
	if c.convert != "" {
		rows, norm, size, err := benchConvert(ctx, c, c.convert)
		if err != nil {
			fatalf("post-processing: %v", err)
		}
		printConvertTable(os.Stdout, c.convert, size, rows, norm)
	}
	// Last: it removes three fresh Nix stores, and file creation on this
	// machine crawls for a while after a large removal.
	if c.cache != "" {
		res := benchCache(ctx, c, c.cache)
		printCache(os.Stdout, c, res)
		verdicts = append(verdicts, cacheTargets(res)...)
	}
	if len(verdicts) > 0 {
		fmt.Fprintf(os.Stdout, "### Targets\n\n| target | measured | met |\n|---|---|---|\n")
		for _, v := range verdicts {
			fmt.Fprintln(os.Stdout, v)
		}
		fmt.Fprintln(os.Stdout)
	}
}

// closure resolves a fixture to its sorted store paths, building it if needed.
func closure(name string) ([]string, error) {
	roots, err := fixtureRoots(name)
	if err != nil {
		return nil, err
	}
	return closureOf(roots)
}

// fixtureRoots builds a fixture if needed and returns its root store paths.
func fixtureRoots(name string) ([]string, error) {
	script := filepath.Join(fixtures.Dir(), "build.sh")
	cmd := exec.Command("bash", script, name)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", script, name, err)
	}
	roots := strings.Fields(string(out))
	if len(roots) == 0 {
		return nil, fmt.Errorf("%s %s printed no store path", script, name)
	}
	return roots, nil
}

func closureOf(roots []string) ([]string, error) {
	out, err := exec.Command("nix-store", append([]string{"-qR"}, roots...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("nix-store -qR: %w", err)
	}
	paths := strings.Fields(string(out))
	sort.Strings(paths)
	return paths, nil
}

// stage copies the closure into dir the way it appears in the image (each
// store path at the root), for the tools that take one source directory.
func stage(paths []string, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := append([]string{"-a"}, paths...)
	args = append(args, dir+"/")
	if out, err := exec.Command("cp", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a: %v: %s", err, out)
	}
	// Store paths are read-only; the copy must stay removable.
	return exec.Command("chmod", "-R", "u+w", dir).Run()
}

func removeAll(dir string) {
	exec.Command("chmod", "-R", "u+w", dir).Run()
	os.RemoveAll(dir)
}

func machine() string {
	var model string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(l[strings.Index(l, ":")+1:])
				break
			}
		}
	}
	n := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n = strings.Count(string(b), "\nprocessor") + 1
	}
	return fmt.Sprintf("%s, %d CPUs, %s", model, n, time.Now().UTC().Format("2006-01-02"))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
