package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"hlcp/internal/testutil"
)

// TestInterruptEveryPhase: SIGINT (and SIGTERM) at each checkpoint of a
// copy and of a move ends the run through its context: the phase that was
// about to run returns at once, the state is kept, the exit code is 130
// and the message says so; the same command then finishes the job, and
// the copy is exact. (Before, outside the copy phase a signal was an
// os.Exit from the signal goroutine.)
func TestInterruptEveryPhase(t *testing.T) {
	cases := []struct {
		cmd, point string
		sig        syscall.Signal
	}{
		{"copy", "saved-sort", syscall.SIGINT},
		{"copy", "saved-mkdir", syscall.SIGINT},
		{"copy", "saved-copy", syscall.SIGTERM},
		{"copy", "saved-finish", syscall.SIGINT},
		{"move", "saved-copy", syscall.SIGINT},
		{"move", "saved-remove", syscall.SIGINT},
		{"move", "remove-rename:3", syscall.SIGTERM},
	}
	for _, c := range cases {
		t.Run(c.cmd+"-"+c.point, func(t *testing.T) {
			base := t.TempDir()
			src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
			must(t, os.Mkdir(src, 0o755))
			testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 3, Files: 200, DirsPerLevel: 2, Depth: 2, ChangeRate: 0.2, Seed: 11, MaxSize: 4000})
			before, err := testutil.Snapshot(src, compareOpts())
			must(t, err)
			p := startPaused(t, c.point, c.cmd, "--progress=plain", src, dst)
			must(t, p.cmd.Process.Signal(c.sig))
			r := p.resume(t)
			if r.code != 130 || !strings.Contains(r.stderr, "interrupted") {
				t.Fatalf("%s at %s: exit %d, want 130 and 'interrupted'\n%s", c.sig, c.point, r.code, r.stderr)
			}
			if _, err := os.Lstat(filepath.Join(dst, ".hlcp-state", "state.json")); err != nil {
				t.Errorf("the state is gone after an interrupt: %v", err)
			}
			r = run(t, nil, c.cmd, "--progress=plain", src, dst)
			if r.code != 0 || !strings.Contains(r.stderr, "resuming the job") {
				t.Fatalf("rerun: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			checkExact(t, before, dst, compareOpts())
			if c.cmd == "move" {
				if ents, _ := os.ReadDir(src); len(ents) != 0 {
					t.Errorf("the move left %d entries in SRC", len(ents))
				}
			}
		})
	}
}
