package main

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"hlcp/internal/testutil"
)

// killPoint is where a run is killed: when phase's progress counter (as
// shown by --progress) reaches n.
type killPoint struct {
	phase string
	n     int64
}

// runKilled runs hlcp with HLCP_TEST_KILL set. It reports whether the
// process died of SIGKILL; otherwise it returns the exit code.
func runKilled(t *testing.T, kp killPoint, args ...string) (killed bool, code int, out string) {
	t.Helper()
	cmd := exec.Command(hlcpBin, args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("HLCP_TEST_KILL=%s:%d", kp.phase, kp.n))
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true, -1, string(b)
		}
		return false, ee.ExitCode(), string(b)
	} else if err != nil {
		t.Fatalf("run hlcp: %v", err)
	}
	return false, 0, string(b)
}

// checkUnion proves that no path of the original tree is lost: each is in
// SRC unchanged, or else in DST with the same type and content.
func checkUnion(t *testing.T, before *testutil.Tree, src, dst string, when string) {
	t.Helper()
	opts := testutil.CompareOptions{Content: true}
	s, err := testutil.Snapshot(src, opts)
	if err != nil {
		t.Fatalf("%s: snapshot SRC: %v", when, err)
	}
	d, err := testutil.Snapshot(dst, opts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: snapshot DST: %v", when, err)
	}
	same := func(a, b *testutil.Entry) bool {
		return a.Type() == b.Type() && a.SHA256 == b.SHA256 && a.Target == b.Target && a.Rdev == b.Rdev
	}
	var lost []string
	for _, p := range before.Paths() {
		e := before.Entries[p]
		if se := s.Get(p); se != nil {
			if !same(e, se) {
				lost = append(lost, p+" (changed in SRC)")
			}
			continue
		}
		if d == nil {
			lost = append(lost, p)
			continue
		}
		if de := d.Get(p); de == nil || !same(e, de) {
			lost = append(lost, p)
		}
	}
	if len(lost) > 0 {
		if len(lost) > 20 {
			lost = append(lost[:20], fmt.Sprintf("... and %d more", len(lost)-20))
		}
		t.Fatalf("%s: paths in neither SRC nor DST:\n  %s", when, strings.Join(lost, "\n  "))
	}
}

// TestKillAnywhere kills copy and move jobs with SIGKILL at random moments
// of every phase (seeded; the seed is logged), reruns the same command each
// time, and checks with the oracle that the final DST equals the original
// SRC, and, for move, that after every kill each original path is in SRC
// or in DST, and that SRC ends empty. The move's removal phases get a job
// of their own (killed first right after the copy is durable), so that a
// kill that comes too late in an earlier phase cannot leave them untried.
func TestKillAnywhere(t *testing.T) {
	type plan struct {
		phase string
		k     int
	}
	copyPhases := []plan{{"scan", 3}, {"sort", 2}, {"mkdir", 2}, {"copy", 5}, {"finish", 3}}
	cases := []struct {
		name, mode string
		first      string // HLCP_TEST_CRASH_AT of a first run, or ""
		phases     []plan
	}{
		{"copy", "copy", "", copyPhases},
		{"move-copying", "move", "", copyPhases},
		{"move-removing", "move", "remove", []plan{{"remove", 6}, {"rmdir", 3}}},
	}
	for ci, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			seed := int64(ci+1) * 7919
			rng := rand.New(rand.NewSource(seed))
			base := t.TempDir()
			src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
			must(t, os.Mkdir(src, 0o755))
			paths, inodes := testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 8, Files: 2000, DirsPerLevel: 5, Depth: 3, ChangeRate: 0.2, Seed: seed, MaxSize: 30000})
			must(t, os.Symlink("daily.0", filepath.Join(src, "latest")))
			must(t, syscall.Mkfifo(filepath.Join(src, "fifo"), 0o640))
			must(t, os.Link(filepath.Join(src, "latest"), filepath.Join(src, "latest.link")))
			// Atimes are not compared: reading a symlink (the rerun's copy
			// of it, or checkUnion's) updates its atime under relatime, and
			// a resumed job copies the new one.
			opts := compareOpts()
			opts.Atime = false
			before, err := testutil.Snapshot(src, opts)
			must(t, err)
			dirs := 0
			for _, e := range before.Entries {
				if e.IsDir() {
					dirs++
				}
			}
			nondir := len(before.Entries) - dirs
			t.Logf("seed %d: %d paths, %d inodes, %d directories", seed, paths, inodes, dirs)
			totals := map[string]int{"scan": len(before.Entries), "sort": 1, "mkdir": dirs,
				"copy": inodes + nondir, "finish": dirs, "remove": inodes + nondir, "rmdir": dirs}

			// A kill point's n counts the progress of that run (which
			// resumes where the last checkpoint left the phase): k kills
			// of at most total/2k each leave the phase unfinished, with
			// room for the lag of the hook's polling. (The sort reports
			// progress every 64k records: its kill is at any moment.)
			var kps []killPoint
			for _, p := range c.phases {
				for i := 0; i < p.k; i++ {
					kps = append(kps, killPoint{p.phase, int64(rng.Intn(max(totals[p.phase]/(2*p.k), 1)))})
				}
			}
			args := []string{c.mode, "-j", "3", "--checkpoint=2ms", "--progress=none", src, dst}
			if c.first != "" {
				crashAt(t, c.first, args...)
			}
			fired := map[string]int{}
			finished := false
			for i, kp := range kps {
				killed, code, out := runKilled(t, kp, args...)
				when := fmt.Sprintf("kill %d at %s:%d", i, kp.phase, kp.n)
				if c.mode == "move" {
					checkUnion(t, before, src, dst, when)
				}
				if killed {
					fired[kp.phase]++
					continue
				}
				if code != 0 {
					t.Fatalf("%s: the run was not killed and exited %d\n%s", when, code, out)
				}
				t.Logf("%s: the phase ended before the kill; the job finished", when)
				finished = true
				break
			}
			t.Logf("kills that fired, per phase: %v", fired)
			total := 0
			for _, n := range fired {
				total += n
			}
			if total < len(kps)*2/3 {
				t.Errorf("only %d of %d kills fired: %v", total, len(kps), fired)
			}
			for _, p := range c.phases {
				if fired[p.phase] == 0 {
					t.Errorf("no kill fired in phase %s", p.phase)
				}
			}
			if !finished {
				r := run(t, nil, args...)
				if r.code != 0 {
					t.Fatalf("final rerun: exit %d\n%s%s", r.code, r.stdout, r.stderr)
				}
			}
			if c.mode == "move" {
				checkUnion(t, before, src, dst, "the end")
				ents, err := os.ReadDir(src)
				must(t, err)
				if len(ents) != 0 {
					t.Errorf("SRC is not empty after the move: %d entries, first %s", len(ents), ents[0].Name())
				}
			}
			checkExact(t, before, dst, opts)
			if _, err := os.Lstat(filepath.Join(dst, ".hlcp-state")); err == nil {
				t.Errorf("the state was not removed")
			}
		})
	}
}
