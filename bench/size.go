package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// A tool copies SRC to DST (which does not exist yet).
type tool struct {
	name string
	cmd  func(hlcp, src, dst, jobs string) string
}

func q(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

var tools = []tool{
	{"hlcp", func(h, s, d, j string) string {
		if j != "" {
			j = " -j " + j
		}
		return fmt.Sprintf("%s copy -q%s %s %s", q(h), j, q(s), q(d))
	}},
	{"cp -a", func(_, s, d, _ string) string { return fmt.Sprintf("cp -a %s %s", q(s), q(d)) }},
	{"rsync -aH", func(_, s, d, _ string) string { return fmt.Sprintf("rsync -aH %s/ %s/", q(s), q(d)) }},
	{"rsync -aH --no-inc-recursive", func(_, s, d, _ string) string {
		return fmt.Sprintf("rsync -aH --no-inc-recursive %s/ %s/", q(s), q(d))
	}},
	{"tar | tar", func(_, s, d, _ string) string {
		return fmt.Sprintf("mkdir %s && tar -C %s --format=posix --numeric-owner -cf - . | tar -C %s --numeric-owner -xpf -", q(d), q(s), q(d))
	}},
	{"bsdtar | bsdtar", func(_, s, d, _ string) string {
		return fmt.Sprintf("mkdir %s && bsdtar -C %s --format=pax --numeric-owner -cf - . | bsdtar -C %s --numeric-owner -xpf -", q(d), q(s), q(d))
	}},
}

func toolNames() []string {
	var n []string
	for _, t := range tools {
		n = append(n, t.name)
	}
	return n
}

func toolByName(name string) (tool, bool) {
	for _, t := range tools {
		if t.name == name {
			return t, true
		}
	}
	return tool{}, false
}

// ToolResult is one tool on one tree: the median run and all runs.
type ToolResult struct {
	Tool     string    `json:"tool"`
	Median   Measure   `json:"median"`
	Runs     []Measure `json:"runs"`
	Check    string    `json:"check"` // "ok", "differs: ...", "failed: ...", "skipped"
	Syscalls int64     `json:"syscalls,omitempty"`
}

// SizeResult is one tree size.
type SizeResult struct {
	Size     string       `json:"size"`
	Spec     Spec         `json:"spec"`
	Paths    int64        `json:"paths"`
	Inodes   int64        `json:"inodes"`
	Bytes    int64        `json:"bytes"`
	Machine  string       `json:"machine"`
	Date     string       `json:"date"`
	Loop     bool         `json:"loop_ext4"`
	LoopDIO  bool         `json:"loop_direct_io"`
	Cold     bool         `json:"cold_cache"`
	Copy     []ToolResult `json:"copy"`
	Verify   []ToolResult `json:"verify,omitempty"`
	Commands []string     `json:"commands"`
}

func machine() string {
	cpu := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(l[strings.Index(l, ":")+1:])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
	}
	var uts []byte
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		uts = out
	}
	return fmt.Sprintf("%d CPUs (%s), %s RAM, Linux %s", runtime.NumCPU(), cpu, mem, strings.TrimSpace(string(uts)))
}

// genVersion changes whenever the generator makes other trees from the same
// Spec, so that trees kept from an earlier version are not reused.
const genVersion = 2

func srcName(size string) string { return fmt.Sprintf("src-%s-v%d", size, genVersion) }

// source generates (or reuses) the source tree of a size.
func source(c *config, size string, spec Spec) (*fsys, *SizeResult, error) {
	// The fields that describe this run, not the tree.
	thisRun := func(r *SizeResult) {
		r.Machine, r.Date, r.Loop, r.Cold = machine(), time.Now().UTC().Format(time.RFC3339), c.loop, c.cold && os.Geteuid() == 0
		r.LoopDIO = c.loop && loopDirectIO
	}
	res := &SizeResult{Size: size, Spec: spec}
	thisRun(res)
	name := srcName(size)
	meta := filepath.Join(c.work, name+".json")
	if b, err := os.ReadFile(meta); err == nil && json.Unmarshal(b, res) == nil && res.Spec == spec {
		thisRun(res)
		if c.loop {
			if _, err := os.Stat(filepath.Join(c.work, name+".img")); err == nil {
				f, err := mountImage(filepath.Join(c.work, name+".img"), filepath.Join(c.work, name))
				if err == nil {
					logf("reusing the generated %s tree (%d paths)", size, res.Paths)
					return f, res, nil
				}
			}
		} else if _, err := os.Stat(filepath.Join(c.work, name, "tree")); err == nil {
			return &fsys{dir: filepath.Join(c.work, name)}, res, nil
		}
	}
	// Room for the data and an inode per path (links are directory entries).
	est := int64(spec.Files) * 60 << 10 * int64(1+float64(spec.Snapshots)*(spec.Edit+spec.Add)+1)
	est += int64(spec.Files) * int64(spec.Snapshots) * 300
	inodes := int64(spec.Files)*int64(1+float64(spec.Snapshots)*(spec.Edit+spec.Add)*2) + int64(spec.Snapshots)*100000
	f, err := mkfsMount(c.work, name, est+1<<30, inodes, c.loop)
	if err != nil {
		return nil, nil, err
	}
	logf("generating the %s tree: %d snapshots of %d files", size, spec.Snapshots, spec.Files)
	paths, ino, bytes, err := Generate(filepath.Join(f.dir, "tree"), spec, func(s string) { logf("  %s", s) })
	if err != nil {
		f.destroy()
		return nil, nil, fmt.Errorf("generate: %w", err)
	}
	res.Paths, res.Inodes, res.Bytes = paths, ino, bytes
	logf("generated %d paths, %d inodes, %.1f GiB", paths, ino, float64(bytes)/(1<<30))
	b, _ := json.Marshal(res)
	os.WriteFile(meta, b, 0o644)
	return f, res, nil
}

func benchSize(c *config, size string, spec Spec) (*SizeResult, error) {
	src, res, err := source(c, size, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if c.keepSrc {
			src.unmount()
		} else {
			src.destroy()
			os.Remove(filepath.Join(c.work, srcName(size)+".json"))
		}
	}()
	srcTree := filepath.Join(src.dir, "tree")
	usedB, usedI := usage(src.dir)
	// Images are sparse files: size them for tools that fill holes (rsync
	// without -S writes every sparse file in full: 16 MiB each).
	dstBytes := 2*usedB + int64(float64(res.Inodes)*spec.Sparse*2)*(16<<20) + 2<<30
	canVerify := exec.Command(c.hlcp, "verify", "--help").Run() == nil
	var hlcpWall float64
	for _, name := range c.tools {
		t, _ := toolByName(name)
		tr := ToolResult{Tool: name}
		for r := 0; r < c.runs; r++ {
			dst, err := mkfsMount(c.work, "dst", dstBytes, usedI+usedI/4+100000, c.loop)
			if err != nil {
				return nil, err
			}
			target := filepath.Join(dst.dir, "copy")
			// A copy is done when it is durable: hlcp syncs the
			// destination before it exits, the others leave their
			// writes in the page cache, so every tool is timed up to
			// a sync of the destination filesystem.
			line := "(" + t.cmd(c.hlcp, srcTree, target, c.jobsFlag) + ") && sync -f " + q(dst.dir)
			if r == 0 {
				res.Commands = append(res.Commands, line)
			}
			logf("%s: %s (run %d/%d)", size, name, r+1, c.runs)
			m := measure(line, c.cold, c.limitFor(name, hlcpWall))
			logf("  wall %.1fs user %.1fs sys %.1fs peak RSS %.1f MiB exit %d", m.Wall, m.User, m.Sys, float64(m.PeakRSS)/(1<<20), m.Exit)
			if name == "hlcp" && m.Exit == 0 {
				hlcpWall = m.Wall
			}
			tr.Runs = append(tr.Runs, m)
			if r == 0 {
				switch {
				case m.Killed:
					tr.Check = fmt.Sprintf("killed at the time limit (%.0f s)", m.Wall)
				case m.Exit != 0:
					tr.Check = "failed: " + lastLines(m.Tail, 3)
				case c.noCheck:
					tr.Check = "skipped"
				case !canVerify:
					tr.Check = "skipped (no hlcp verify)"
				default:
					tr.Check = check(c, srcTree, target)
				}
				logf("  check: %s", tr.Check)
				// Verify tools run on the hlcp copy.
				if c.verify && name == "hlcp" && m.Exit == 0 {
					res.Verify = benchVerify(c, srcTree, target, canVerify)
				}
			}
			dst.destroy()
		}
		tr.Median = median(tr.Runs)
		if c.strace && slices.Contains(c.straceT, name) && (c.straceMax <= 0 || res.Paths <= c.straceMax) {
			dst, err := mkfsMount(c.work, "dst", dstBytes, usedI+usedI/4+100000, c.loop)
			if err != nil {
				return nil, err
			}
			n, err := straceCount(t.cmd(c.hlcp, srcTree, filepath.Join(dst.dir, "copy"), c.jobsFlag), c.work)
			if err != nil {
				logf("  strace: %v", err)
			}
			tr.Syscalls = n
			dst.destroy()
		}
		res.Copy = append(res.Copy, tr)
	}
	return res, nil
}

func check(c *config, src, dst string) string {
	out, err := exec.Command(c.hlcp, "verify", "--json", "--progress=none", src, dst).Output()
	if err == nil {
		return "ok"
	}
	return summarizeDiffs(out, err)
}

// summarizeDiffs turns verify --json output into one short cell: the count
// per code and the first difference.
func summarizeDiffs(out []byte, err error) string {
	var first string
	var counts []string
	for _, l := range strings.Split(string(out), "\n") {
		var d struct {
			Code, Path string
			Summary    *struct {
				ByCode map[string]int64 `json:"by_code"`
			} `json:"summary"`
		}
		if json.Unmarshal([]byte(l), &d) != nil {
			continue
		}
		if d.Summary != nil {
			for k, v := range d.Summary.ByCode {
				counts = append(counts, fmt.Sprintf("%s %d", k, v))
			}
			sort.Strings(counts)
		} else if first == "" && d.Code != "" {
			if d.Path == "" {
				d.Path = "." // the root
			}
			first = d.Code + " " + d.Path
		}
	}
	if len(counts) == 0 {
		return fmt.Sprintf("verify failed: %v", err)
	}
	return fmt.Sprintf("differs: %s (e.g. %s)", strings.Join(counts, ", "), first)
}

// benchVerify times the verifiers on an exact copy.
func benchVerify(c *config, src, dst string, canVerify bool) []ToolResult {
	var out []ToolResult
	lines := []struct{ name, cmd string }{
		{"hlcp verify --checksum", fmt.Sprintf("%s verify --checksum --progress=none %s %s", q(c.hlcp), q(src), q(dst))},
		{"rsync -naHc --delete", fmt.Sprintf("rsync -naHc --delete %s/ %s/", q(src), q(dst))},
		{"diff -r", fmt.Sprintf("diff -r --no-dereference %s %s", q(src), q(dst))},
	}
	var hlcpWall float64
	for i, l := range lines {
		if i == 0 && !canVerify {
			continue
		}
		tr := ToolResult{Tool: l.name}
		for r := 0; r < c.runs; r++ {
			logf("verify: %s (run %d/%d)", l.name, r+1, c.runs)
			m := measure(l.cmd, c.cold, c.limitFor(l.name, hlcpWall))
			logf("  wall %.1fs peak RSS %.1f MiB exit %d", m.Wall, float64(m.PeakRSS)/(1<<20), m.Exit)
			if i == 0 && m.Exit == 0 {
				hlcpWall = m.Wall
			}
			tr.Runs = append(tr.Runs, m)
		}
		tr.Median = median(tr.Runs)
		tr.Check = "ok"
		if tr.Median.Killed {
			tr.Check = fmt.Sprintf("killed at the time limit (%.0f s)", tr.Median.Wall)
		} else if tr.Median.Exit != 0 {
			tr.Check = fmt.Sprintf("exit %d: %s", tr.Median.Exit, lastLines(tr.Median.Tail, 2))
		}
		out = append(out, tr)
	}
	return out
}

// limitFor is the time limit of a peer's run: -limit, or by default ten
// times hlcp's time on the same tree (at least two minutes), so that a tool
// that does not finish on a large tree (GNU tar's link table) does not
// stall the benchmark. hlcp itself runs without a limit.
func (c *config) limitFor(name string, hlcpWall float64) time.Duration {
	if strings.HasPrefix(name, "hlcp") {
		return 0
	}
	if c.limit > 0 {
		return c.limit
	}
	if hlcpWall <= 0 {
		return 0
	}
	return max(2*time.Minute, time.Duration(10*hlcpWall*float64(time.Second)))
}

// median picks, per field, the median over the runs.
func median(runs []Measure) Measure {
	if len(runs) == 0 {
		return Measure{}
	}
	med := func(f func(Measure) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	m := runs[0]
	m.Wall = med(func(r Measure) float64 { return r.Wall })
	m.User = med(func(r Measure) float64 { return r.User })
	m.Sys = med(func(r Measure) float64 { return r.Sys })
	m.PeakRSS = int64(med(func(r Measure) float64 { return float64(r.PeakRSS) }))
	for _, r := range runs {
		if r.Exit != 0 {
			m.Exit = r.Exit
		}
		m.Killed = m.Killed || r.Killed
	}
	return m
}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

func (r *SizeResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s tree: %s paths, %s inodes, %.1f GiB (%d snapshots)\n\n", r.Size, commas(r.Paths), commas(r.Inodes), float64(r.Bytes)/(1<<30), r.Spec.Snapshots)
	where := "directories"
	if r.Loop {
		where = "loop-mounted ext4 images, a fresh one per run"
		if r.LoopDIO {
			where += " (loop devices with direct I/O)"
		} else {
			where += " (buffered loop devices)"
		}
	}
	cache := "warm page cache"
	if r.Cold {
		cache = "page cache dropped before each run"
	}
	fmt.Fprintf(&b, "%s; %s; %s; each copy timed until `sync -f` of the destination returns; medians of %d run(s); ratios are tool / hlcp; \">\" marks a run killed at the time limit.\n\n", r.Machine, where, cache, len(r.Copy[0].Runs))
	var base *ToolResult
	for i := range r.Copy {
		if r.Copy[i].Tool == "hlcp" {
			base = &r.Copy[i]
		}
	}
	fmt.Fprintf(&b, "| tool | wall s | user s | sys s | peak RSS MiB | wall / hlcp | RSS / hlcp | syscalls/path | check |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, t := range r.Copy {
		wr, rr, gt := "", "", ""
		if t.Median.Killed {
			gt = ">"
		}
		if base != nil && base.Median.Wall > 0 {
			wr = fmt.Sprintf("%s%.2fx", gt, t.Median.Wall/base.Median.Wall)
			rr = fmt.Sprintf("%.2fx", float64(t.Median.PeakRSS)/float64(base.Median.PeakRSS))
		}
		sc := ""
		if t.Syscalls > 0 && r.Paths > 0 {
			sc = fmt.Sprintf("%.2f", float64(t.Syscalls)/float64(r.Paths))
		}
		fmt.Fprintf(&b, "| %s | %s%.1f | %.1f | %.1f | %s | %s | %s | %s | %s |\n", mdEscape(t.Tool), gt, t.Median.Wall, t.Median.User, t.Median.Sys, mib(t.Median.PeakRSS), wr, rr, sc, strings.ReplaceAll(t.Check, "\n", " "))
	}
	if len(r.Verify) > 0 {
		fmt.Fprintf(&b, "\n| verifier | wall s | peak RSS MiB | wall / hlcp verify | result |\n|---|---:|---:|---:|---|\n")
		vb := r.Verify[0].Median.Wall
		for _, t := range r.Verify {
			gt := ""
			if t.Median.Killed {
				gt = ">"
			}
			fmt.Fprintf(&b, "| %s | %s%.1f | %s | %s%.2fx | %s |\n", t.Tool, gt, t.Median.Wall, mib(t.Median.PeakRSS), gt, t.Median.Wall/vb, strings.ReplaceAll(t.Check, "\n", " "))
		}
	}
	fmt.Fprintf(&b, "\nCommands:\n")
	for _, c := range r.Commands {
		fmt.Fprintf(&b, "- `%s`\n", c)
	}
	return b.String()
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func commas(n int64) string {
	s := fmt.Sprint(n)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}
