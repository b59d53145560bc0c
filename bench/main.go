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
	"sort"
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
	all, err := loadResults(c.out)
	if err != nil {
		return err
	}
	png := filepath.Join(c.out, "scaling.png")
	if err := plotResults(all, png); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	logf("wrote %s", png)
	return nil
}

// loadResults reads every size's results in dir, smallest tree first.
func loadResults(dir string) ([]*SizeResult, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	var all []*SizeResult
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var r SizeResult
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		all = append(all, &r)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Paths < all[j].Paths })
	return all, nil
}
