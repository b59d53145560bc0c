package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestSmallBenchmark is the CI smoke test of the benchmark: it generates
// the small tree, copies it with every tool, checks every copy with hlcp
// verify and checks that the table and the plot are produced. It asserts
// correctness, never timings.
func TestSmallBenchmark(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the benchmark smoke test builds and copies a 10,000-path tree six times")
	}
	for _, bin := range []string{"go", "cp", "rsync", "tar", "bsdtar", "diff"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (CI installs rsync and libarchive-tools): skipping the benchmark smoke test", bin)
		}
	}
	loop := os.Geteuid() == 0
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		loop = false
	}
	if !loop {
		t.Log("not root or no mkfs.ext4: trees go to plain directories instead of loop-mounted ext4 images")
	}
	hlcp := filepath.Join(t.TempDir(), "hlcp")
	if out, err := exec.Command("go", "build", "-o", hlcp, "../cmd/hlcp").CombinedOutput(); err != nil {
		t.Fatalf("build hlcp: %v\n%s", err, out)
	}
	c := &config{
		sizes: []string{"small"}, tools: toolNames(), runs: 1,
		work: t.TempDir(), out: t.TempDir(), hlcp: hlcp,
		loop: loop, verify: true, strace: false, cold: false, plotDir: "plot",
		copy: true, sync: true,
	}
	if err := run(c); err != nil {
		t.Fatal(err)
	}
	all, err := loadResults(c.out)
	if err != nil || len(all) != 1 {
		t.Fatalf("results: %v (%d sizes)", err, len(all))
	}
	res := all[0]
	if res.Paths < 10000 || res.Inodes == 0 || res.Inodes >= res.Paths {
		t.Errorf("generated tree: %d paths, %d inodes; want >= 10,000 paths sharing fewer inodes", res.Paths, res.Inodes)
	}
	if len(res.Copy) != len(tools) {
		t.Errorf("%d tools measured, want %d", len(res.Copy), len(tools))
	}
	for _, tr := range res.Copy {
		want := "ok"
		if tr.Tool == "bsdtar | bsdtar" {
			// bsdtar restores the times of the directories it creates,
			// not those of the extraction root it is given.
			want = "differs: mtime 1 (e.g. mtime .)"
		}
		if tr.Median.Exit != 0 || tr.Check != want {
			t.Errorf("%s: exit %d, check %q, want %q", tr.Tool, tr.Median.Exit, tr.Check, want)
		}
		if tr.Median.Wall <= 0 || tr.Median.PeakRSS <= 0 {
			t.Errorf("%s: not measured: %+v", tr.Tool, tr.Median)
		}
	}
	if len(res.Verify) != 3 {
		t.Errorf("%d verifiers measured, want 3", len(res.Verify))
	}
	for _, tr := range res.Verify {
		if tr.Check != "ok" {
			t.Errorf("verifier %s: %s", tr.Tool, tr.Check)
		}
	}
	md, err := os.ReadFile(filepath.Join(c.out, "small.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range res.Copy {
		if !strings.Contains(string(md), "| "+mdEscape(tr.Tool)+" |") {
			t.Errorf("the table has no row for %s:\n%s", tr.Tool, md)
		}
	}
	// The sync scenario: both mirrors exact after the night, and again
	// after the run with nothing changed.
	b, err := os.ReadFile(filepath.Join(c.out, "small-sync.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sr SyncResult
	if err := json.Unmarshal(b, &sr); err != nil {
		t.Fatal(err)
	}
	if sr.Night.Edited == 0 || sr.Night.Added == 0 || sr.Night.Deleted == 0 || sr.Night.Renamed == "" {
		t.Errorf("the night changed too little: %+v", sr.Night)
	}
	if len(sr.Runs) != 4 {
		t.Errorf("%d sync runs, want 4 (hlcp, rsync, each twice)", len(sr.Runs))
	}
	// (rsync -aH --delete leaves directory mtimes that differ from SRC's
	// after a rotation: its check is reported, not required.)
	for _, tr := range sr.Runs {
		if tr.Median.Exit != 0 || strings.HasPrefix(tr.Tool, "hlcp") && tr.Check != "ok" {
			t.Errorf("sync scenario, %s: exit %d, check %q", tr.Tool, tr.Median.Exit, tr.Check)
		}
	}
	png, err := os.ReadFile(filepath.Join(c.out, "scaling.png"))
	if err != nil || len(png) < 1000 || string(png[1:4]) != "PNG" {
		t.Errorf("scaling.png: %v, %d bytes", err, len(png))
	}
}

// loadResults reads every size's results in dir, smallest tree first.
func loadResults(dir string) ([]*SizeResult, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	var all []*SizeResult
	for _, f := range files {
		if strings.HasSuffix(f, "-sync.json") {
			continue
		}
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
