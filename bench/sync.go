package main

// The sync scenario (-sync): a mirror of the generated repository is
// brought up to date after one night, by hlcp sync and by rsync -aH
// --delete, each on its own identical mirror.
//
//  1. The generated tree is copied (hlcp copy) to a new image: the SRC that
//     the night changes. Two mirrors of it are made (hlcp copy), each on
//     its own image.
//  2. One night: daily.{S-1} is dropped, every daily.N becomes daily.N+1,
//     and a new daily.0 is daily.1 hard-linked, with 1% of its files
//     edited (a new inode), 0.3% new, 0.2% deleted and one directory
//     renamed.
//  3. With a cold cache, hlcp sync brings its mirror up to date, and
//     rsync -aH --delete SRC/ DST/ the other; each is timed up to a sync
//     of its filesystem and checked with hlcp verify.
//  4. Both run again, with nothing changed.

import (
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// SyncResult is the sync scenario of one tree size.
type SyncResult struct {
	Size     string       `json:"size"`
	Paths    int64        `json:"paths"`
	Night    NightStats   `json:"night"`
	Runs     []ToolResult `json:"runs"` // hlcp sync, rsync, then both again with nothing changed
	Commands []string     `json:"commands"`
}

// NightStats is what one night changed.
type NightStats struct {
	Edited, Added, Deleted int
	Renamed                string
}

func benchSync(c *config, size string, spec Spec) (*SyncResult, error) {
	src, res, err := source(c, size, spec)
	if err != nil {
		return nil, err
	}
	defer src.unmount()
	usedB, usedI := usage(src.dir)
	mk := func(name string) (*fsys, string, error) {
		f, err := mkfsMount(c.work, name, 2*usedB+2<<30, usedI+usedI/2+200000, c.loop)
		return f, filepath.Join(f.dir, "tree"), err
	}
	srcFS, srcTree, err := mk("sync-src")
	if err != nil {
		return nil, err
	}
	defer srcFS.destroy()
	logf("sync %s: copying the tree to a SRC of its own", size)
	if out, err := exec.Command(c.hlcp, "copy", "-q", filepath.Join(src.dir, "tree"), srcTree).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy: %v %s", err, out)
	}
	out := &SyncResult{Size: size, Paths: res.Paths}
	mirrors := map[string]*fsys{}
	for _, name := range []string{"hlcp", "rsync"} {
		f, tree, err := mk("sync-" + name)
		if err != nil {
			return nil, err
		}
		defer f.destroy()
		logf("sync %s: the %s mirror", size, name)
		if o, err := exec.Command(c.hlcp, "copy", "-q", srcTree, tree).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("copy: %v %s", err, o)
		}
		mirrors[name] = f
	}
	logf("sync %s: one night", size)
	if out.Night, err = night(srcTree, spec.Snapshots, rand.New(rand.NewSource(spec.Seed+100))); err != nil {
		return nil, fmt.Errorf("night: %w", err)
	}
	// hlcp's phases go to a log beside the results (its progress lines,
	// every 10 s and at the end of each phase), and with HLCP_BENCH_SYNC_PROFILE=P
	// a CPU profile of each hlcp sync (P.SIZE, P.SIZE-again).
	hlcpLine := func(pass string) string {
		log := filepath.Join(c.out, size+"-sync-hlcp"+pass+".log")
		env := ""
		if p := os.Getenv("HLCP_BENCH_SYNC_PROFILE"); p != "" {
			env = "HLCP_CPUPROFILE=" + q(p+"."+size+pass) + " "
		}
		return fmt.Sprintf("%s%s sync --progress=plain %s %s 2>%s >&2", env, q(c.hlcp), q(srcTree), q(filepath.Join(mirrors["hlcp"].dir, "tree")), q(log))
	}
	lines := map[string]string{
		"hlcp sync":          hlcpLine(""),
		"rsync -aH --delete": fmt.Sprintf("rsync -aH --delete %s/ %s/", q(srcTree), q(filepath.Join(mirrors["rsync"].dir, "tree"))),
	}
	for _, pass := range []string{"", " (nothing changed)"} {
		for _, name := range []string{"hlcp sync", "rsync -aH --delete"} {
			mirror := mirrors["hlcp"]
			if name != "hlcp sync" {
				mirror = mirrors["rsync"]
			}
			cmdLine := lines[name]
			if name == "hlcp sync" && pass != "" {
				cmdLine = hlcpLine("-again")
			}
			line := "(" + cmdLine + ") && sync -f " + q(mirror.dir)
			if pass == "" {
				out.Commands = append(out.Commands, line)
			}
			logf("sync %s: %s%s", size, name, pass)
			m := measure(line, c.cold, c.limit)
			logf("  wall %.1fs user %.1fs sys %.1fs peak RSS %.1f MiB exit %d", m.Wall, m.User, m.Sys, float64(m.PeakRSS)/(1<<20), m.Exit)
			tr := ToolResult{Tool: name + pass, Median: m, Runs: []Measure{m}}
			switch {
			case m.Exit != 0:
				tr.Check = "failed: " + lastLines(m.Tail, 3)
			case c.noCheck:
				tr.Check = "skipped"
			default:
				tr.Check = check(c, srcTree, filepath.Join(mirror.dir, "tree"))
			}
			logf("  check: %s", tr.Check)
			out.Runs = append(out.Runs, tr)
		}
	}
	return out, nil
}

// night rotates the repository at root (snapshots daily.0 .. daily.{n-1})
// as rsnapshot does, and makes a new daily.0: daily.1 hard-linked, with 1%
// of the files edited, 0.3% new, 0.2% deleted, one directory renamed.
func night(root string, n int, rng *rand.Rand) (NightStats, error) {
	var ns NightStats
	snap := func(i int) string { return filepath.Join(root, fmt.Sprintf("daily.%d", i)) }
	if err := os.RemoveAll(snap(n - 1)); err != nil {
		return ns, err
	}
	for i := n - 2; i >= 0; i-- {
		if err := os.Rename(snap(i), snap(i+1)); err != nil {
			return ns, err
		}
	}
	prev, cur := snap(1), snap(0)
	var dirs, files []string
	err := filepath.WalkDir(prev, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(prev, p)
		if d.IsDir() {
			dirs = append(dirs, rel)
		} else {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return ns, err
	}
	// One leaf directory is renamed (its files keep their inodes).
	var leaves []string
	for _, d := range dirs {
		if filepath.Dir(d) != "." && len(d) > 0 {
			leaves = append(leaves, d)
		}
	}
	sort.Strings(leaves)
	renamed := leaves[rng.Intn(len(leaves))]
	ns.Renamed = renamed
	target := func(rel string) string {
		if filepath.Dir(rel) == renamed {
			return filepath.Join(renamed+"-renamed", filepath.Base(rel))
		}
		return rel
	}
	for _, d := range dirs {
		if d == renamed {
			d = renamed + "-renamed"
		}
		if err := os.MkdirAll(filepath.Join(cur, d), 0o755); err != nil {
			return ns, err
		}
	}
	buf := make([]byte, 64<<10)
	for _, rel := range files {
		to := filepath.Join(cur, target(rel))
		switch r := rng.Float64(); {
		case r < 0.002:
			ns.Deleted++
		case r < 0.012:
			ns.Edited++
			if err := writeNew(to, rng, buf); err != nil {
				return ns, err
			}
		default:
			if err := os.Link(filepath.Join(prev, rel), to); err != nil {
				return ns, err
			}
		}
	}
	for i := 0; i < len(files)*3/1000; i++ {
		d := dirs[rng.Intn(len(dirs))]
		if d == renamed {
			d = renamed + "-renamed"
		}
		if err := writeNew(filepath.Join(cur, d, fmt.Sprintf("new-%06d", i)), rng, buf); err != nil {
			return ns, err
		}
		ns.Added++
	}
	now := unix.NsecToTimespec(time.Now().UnixNano())
	return ns, unix.UtimesNano(cur, []unix.Timespec{now, now})
}

// writeNew writes a new file of a few KiB at p (replacing what is there:
// an edit makes a new inode, as rsync does).
func writeNew(p string, rng *rand.Rand, buf []byte) error {
	n := 512 + rng.Intn(len(buf)-512)
	rng.Read(buf[:n])
	tmp := p + ".new"
	if err := os.WriteFile(tmp, buf[:n], 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// markdown is the sync scenario's table: wall time, ratio to rsync's
// first run, peak RSS, check.
func (r *SyncResult) markdown() string {
	s := fmt.Sprintf("### sync after one night, %s tree (%s paths)\n\n", r.Size, commas(r.Paths))
	s += fmt.Sprintf("The night: %d files edited, %d added, %d deleted, directory %s renamed, daily.0 new, the oldest snapshot dropped.\n\n", r.Night.Edited, r.Night.Added, r.Night.Deleted, r.Night.Renamed)
	s += "| run | wall s | wall / rsync | peak RSS MiB | check |\n|---|---:|---:|---:|---|\n"
	var rsync float64
	for _, t := range r.Runs {
		if t.Tool == "rsync -aH --delete" {
			rsync = t.Median.Wall
		}
	}
	for _, t := range r.Runs {
		ratio := ""
		if rsync > 0 {
			ratio = fmt.Sprintf("%.2fx", t.Median.Wall/rsync)
		}
		s += fmt.Sprintf("| %s | %.1f | %s | %s | %s |\n", mdEscape(t.Tool), t.Median.Wall, ratio, mib(t.Median.PeakRSS), t.Check)
	}
	s += "\nCommands:\n"
	for _, c := range r.Commands {
		s += "- `" + c + "`\n"
	}
	return s
}
