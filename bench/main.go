// Command bench compares hlcp with cp -a, rsync -aH, rsync -aH
// --no-inc-recursive, GNU tar and bsdtar pipes on the same generated
// rsnapshot-shaped trees, in one run: each tool copies to a fresh
// destination filesystem (a new loop-mounted ext4 image when root) after the
// page cache is dropped, its result is checked with `hlcp verify`, and its
// wall, user and sys time and the peak RSS of its whole process tree are
// recorded. It prints a markdown table of each tool's ratios to hlcp and
// draws a PNG of peak RSS and wall time against tree size.
//
//	go run ./bench -size small            # CI smoke test
//	go run ./bench -size 1m,medium -runs 3
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

type config struct {
	sizes     []string
	tools     []string
	runs      int
	work      string
	out       string
	hlcp      string
	loop      bool
	strace    bool
	straceT   []string // tools whose syscalls are counted
	straceMax int64    // trees with more paths are not straced
	plotOnly  bool     // only redraw the plot from the JSON in out
	plotDir   string   // the plot's module (bench/plot)
	sync      bool     // also the sync scenario (sync.go)
	copy      bool     // the copy benchmark
	verify    bool
	noCheck   bool
	cold      bool
	keepSrc   bool
	jobsFlag  string
	limit     time.Duration
}

func main() {
	var c config
	var sizesF, toolsF string
	flag.StringVar(&sizesF, "size", "small", "comma-separated tree sizes: small (CI), 1m (~1M paths), medium (~2M), large (~10M)")
	flag.StringVar(&toolsF, "tools", strings.Join(toolNames(), ","), "comma-separated tools to run")
	flag.IntVar(&c.runs, "runs", 1, "runs per tool and size (medians are reported)")
	flag.StringVar(&c.work, "work", "/var/tmp/hlcp-bench", "work directory for trees and images (needs free space)")
	flag.StringVar(&c.out, "out", "bench/out", "directory for results (JSON, markdown, PNG)")
	flag.StringVar(&c.hlcp, "hlcp", "", "hlcp binary (default: build ./cmd/hlcp)")
	flag.BoolVar(&c.loop, "loop", os.Geteuid() == 0, "use loop-mounted ext4 images for source and destinations (root only)")
	flag.BoolVar(&loopDirectIO, "loop-dio", true, "loop devices read and write their image files with direct I/O, as a disk would (false: buffered, every block cached twice)")
	flag.BoolVar(&c.strace, "strace", false, "also count syscalls per path with strace -c -f (a separate, untimed run) of the -strace-tools")
	var straceF string
	flag.StringVar(&straceF, "strace-tools", "hlcp,cp -a", "comma-separated tools whose syscalls -strace counts (strace slows each down several times)")
	flag.BoolVar(&c.verify, "verify", true, "also time hlcp verify against rsync -naHc --delete and diff -r")
	flag.BoolVar(&c.noCheck, "no-check", false, "do not check each copy with hlcp verify")
	flag.BoolVar(&c.cold, "cold", true, "drop the page cache before each timed run (root only)")
	flag.BoolVar(&c.keepSrc, "keep-src", true, "keep generated source trees for later runs")
	flag.StringVar(&c.jobsFlag, "hlcp-jobs", "", "pass -j to hlcp")
	flag.Int64Var(&c.straceMax, "strace-max-paths", 3_000_000, "with -strace, count syscalls only on trees of at most this many paths (0: all); cp -a under strace takes about 8 times its time")
	flag.BoolVar(&c.plotOnly, "plot-only", false, "run nothing: redraw scaling.png from the JSON results in -out")
	flag.BoolVar(&c.sync, "sync", false, "also run the sync scenario: a mirror brought up to date after one night, hlcp sync against rsync -aH --delete")
	flag.BoolVar(&c.copy, "copy", true, "run the copy benchmark (-copy=false -sync: the sync scenario alone)")
	flag.StringVar(&c.plotDir, "plot-dir", filepath.Join("bench", "plot"), "the plot's own module, run with go run (keeps its library out of hlcp's go.mod)")
	flag.DurationVar(&c.limit, "limit", 0, "time limit of each peer's run (default: 10x hlcp's time on the tree, at least 2m)")
	flag.Parse()
	c.sizes = strings.Split(sizesF, ",")
	c.tools = strings.Split(toolsF, ",")
	c.straceT = strings.Split(straceF, ",")
	if err := run(&c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(c *config) error {
	if err := os.MkdirAll(c.work, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	if c.hlcp == "" && !c.plotOnly {
		c.hlcp = filepath.Join(c.work, "hlcp")
		logf("building hlcp")
		if out, err := exec.Command("go", "build", "-o", c.hlcp, "./cmd/hlcp").CombinedOutput(); err != nil {
			return fmt.Errorf("build hlcp: %v\n%s", err, out)
		}
	}
	for _, t := range c.tools {
		if _, ok := toolByName(t); !ok {
			return fmt.Errorf("unknown tool %q (have %s)", t, strings.Join(toolNames(), ", "))
		}
	}
	for _, size := range c.sizes {
		if c.plotOnly {
			break
		}
		spec, ok := sizes[size]
		if !ok {
			return fmt.Errorf("unknown size %q", size)
		}
		if c.copy {
			res, err := benchSize(c, size, spec)
			if err != nil {
				return fmt.Errorf("size %s: %w", size, err)
			}
			b, _ := json.MarshalIndent(res, "", "  ")
			if err := os.WriteFile(filepath.Join(c.out, size+".json"), b, 0o644); err != nil {
				return err
			}
			md := res.markdown()
			os.WriteFile(filepath.Join(c.out, size+".md"), []byte(md), 0o644)
			fmt.Println(md)
		}
		if c.sync {
			res, err := benchSync(c, size, spec)
			if err != nil {
				return fmt.Errorf("sync %s: %w", size, err)
			}
			b, _ := json.MarshalIndent(res, "", "  ")
			os.WriteFile(filepath.Join(c.out, size+"-sync.json"), b, 0o644)
			md := res.markdown()
			os.WriteFile(filepath.Join(c.out, size+"-sync.md"), []byte(md), 0o644)
			fmt.Println(md)
		}
	}
	if !c.copy {
		return nil // the plot is of the copy benchmark
	}
	png := filepath.Join(c.out, "scaling.png")
	if err := plotResults(c.plotDir, c.out, png); err != nil {
		// The tables and the JSON are the results; the plot is a view.
		logf("no plot: %v", err)
		return nil
	}
	logf("wrote %s", png)
	return nil
}

// plotResults draws png from the JSON results in dir with the plot module
// in plotDir, a module of its own (its plotting library stays out of
// hlcp's go.mod).
func plotResults(plotDir, dir, png string) error {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	absPng, err := filepath.Abs(png)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "run", ".", "-in", absDir, "-out", absPng, "-tools", strings.Join(toolNames(), ","))
	cmd.Dir = plotDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go run %s: %v\n%s", plotDir, err, out)
	}
	return nil
}
