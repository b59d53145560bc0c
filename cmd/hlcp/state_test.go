package main

// The job's state directory as hostile ground (issue 15): symlinks planted
// at the names hlcp uses in it, before and while a job runs; the state
// directory swapped for a symlink by the owner of DST; the modes of the
// state's files; --restart and --state on a directory that is not hlcp's;
// and state files that are cut, zeroed or bit-flipped, a move's included.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/testutil"
)

// stateFileNames are the regular files hlcp makes in a state directory,
// with their temporary names; stateDirNames its subdirectories.
var (
	stateFileNames = []string{
		"state.json", "state.json.tmp", "hlcp-job", "hlcp-job.tmp", "errors.log", "reserve",
		"plan", "plan.tmp", "links", "links.tmp", "dirs", "dirs.tmp", "dirs.idx", "dirs.idx.tmp",
		"copied", "moved",
	}
	stateDirNames = []string{"scan", "sorttmp"}
)

// victimTime is the mtime given to every victim, far from now: a write
// through a planted symlink shows in the mtime even when it restores the
// bytes.
var victimTime = unix.Timespec{Sec: 1500000000, Nsec: 123456789}

// makeVictims makes, outside any tree hlcp works on, a file and a
// directory holding a file, that no run may change.
func makeVictims(t *testing.T, base string) (file, dir string) {
	t.Helper()
	file = filepath.Join(base, "victim-file")
	dir = filepath.Join(base, "victim-dir")
	must(t, os.WriteFile(file, []byte("root:x:0:0:precious victim file\n"), 0o640))
	must(t, os.Mkdir(dir, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "crontab"), []byte("* * * * * root /bin/true\n"), 0o644))
	for _, p := range []string{file, filepath.Join(dir, "crontab"), dir} {
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{victimTime, victimTime}, unix.AT_SYMLINK_NOFOLLOW))
	}
	return file, dir
}

// describePaths describes every path at and below p, never following a
// symlink: names, types, modes, owners, sizes, mtimes, content and
// symlink targets. Two calls return the same string when nothing there
// was changed, created or removed.
func describePaths(t *testing.T, p string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(p, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", path, err)
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(p, path)
		fmt.Fprintf(&b, "%q mode=%o uid=%d gid=%d size=%d mtime=%d.%09d", rel, st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		switch fi.Mode().Type() {
		case 0:
			c, err := os.ReadFile(path)
			if err != nil {
				fmt.Fprintf(&b, " read: %v", err)
			}
			fmt.Fprintf(&b, " sha256=%x", sha256.Sum256(c))
		case fs.ModeSymlink:
			tg, _ := os.Readlink(path)
			fmt.Fprintf(&b, " -> %q", tg)
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// buildSmallSrc builds a small snapshot tree with hard links in a new
// directory src of base, and returns its snapshot.
func buildSmallSrc(t *testing.T, base, name string, files int) (string, *testutil.Tree) {
	t.Helper()
	src := filepath.Join(base, name)
	must(t, os.Mkdir(src, 0o755))
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 3, Files: files, DirsPerLevel: 3, Depth: 2, ChangeRate: 0.2, Seed: 15, MaxSize: 3000})
	before, err := testutil.Snapshot(src, compareOpts())
	must(t, err)
	return src, before
}

// isOneLine reports whether a refusal's stderr is one line.
func isOneLine(s string) bool {
	s = strings.TrimSpace(s)
	return s != "" && !strings.Contains(s, "\n")
}

// checkExactExcept is checkExact with the paths named in skip (and what
// is below them) left out of DST's snapshot: what a run could not remove
// because a symlink was planted in its state directory.
func checkExactExcept(t *testing.T, before *testutil.Tree, dst string, skip ...string) {
	t.Helper()
	after, err := testutil.Snapshot(dst, compareOpts())
	if err != nil {
		t.Fatalf("snapshot %s: %v", dst, err)
	}
	for p := range after.Entries {
		for _, s := range skip {
			if p == s || strings.HasPrefix(p, s+"/") {
				delete(after.Entries, p)
			}
		}
	}
	if d := testutil.Diff(before, after, compareOpts()); len(d) > 0 {
		if len(d) > 40 {
			d = append(d[:40], fmt.Sprintf("... and %d more", len(d)-40))
		}
		t.Errorf("copy differs from source:\n  %s", strings.Join(d, "\n  "))
	}
}

// pausedRun is hlcp started with HLCP_TEST_PAUSE_AT, stopped (SIGSTOP) at
// its pause point.
type pausedRun struct {
	cmd    *exec.Cmd
	so, se bytes.Buffer
	done   chan struct{}
	err    error
}

// procStopped reports whether every thread of process pid is stopped. The
// pause hook's SIGSTOP is process-directed: the leader can show 'T' while
// the thread that sent it still runs, so every thread is looked at.
func procStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// startPaused starts hlcp with HLCP_TEST_PAUSE_AT=point and returns once
// the process has stopped itself there.
func startPaused(t *testing.T, point string, args ...string) *pausedRun {
	t.Helper()
	p := &pausedRun{cmd: exec.Command(hlcpBin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "HLCP_TEST_PAUSE_AT="+point)
	p.cmd.Stdout, p.cmd.Stderr = &p.so, &p.se
	must(t, p.cmd.Start())
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-p.done:
			t.Fatalf("hlcp %v ended (%v) before it paused at %s\nstdout:\n%s\nstderr:\n%s", args, p.err, point, p.so.String(), p.se.String())
		default:
		}
		if procStopped(p.cmd.Process.Pid) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("hlcp %v did not pause at %s", args, point)
		}
		time.Sleep(time.Millisecond)
	}
}

// resume continues the paused run and waits for its end.
func (p *pausedRun) resume(t *testing.T) result {
	t.Helper()
	must(t, p.cmd.Process.Signal(syscall.SIGCONT))
	select {
	case <-p.done:
	case <-time.After(3 * time.Minute):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("hlcp did not end after SIGCONT\nstderr:\n%s", p.se.String())
	}
	r := result{stdout: p.so.String(), stderr: p.se.String()}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		r.code = ee.ExitCode()
	} else if p.err != nil {
		t.Fatalf("hlcp: %v", p.err)
	}
	return r
}

// asNobody runs a shell script as user nobody (uid and gid 65534).
func asNobody(t *testing.T, script string, args ...string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-c", "umask 022; " + script, "sh"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as nobody: %s: %v\n%s", script, err, out)
	}
}

// TestStateSymlinksPlanted: a state directory of root's (mode 0700)
// holding nothing but a symlink, at one of the names hlcp makes there, to
// a file or a directory outside DST. hlcp either refuses, in one line, or
// makes an exact copy; the victim is unchanged either way. Then the same
// with the symlinks planted while a copy or a move is stopped at a
// checkpoint: at every name hlcp has not made yet, and over the names it
// has.
func TestStateSymlinksPlanted(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root: the state directory is root's own")
	}
	base := t.TempDir()
	// Each case gets victims of its own, so that a failure does not
	// spill over into the next ones.
	victimsOf := func(t *testing.T, n int) (vfile, vdir string, victims func() string) {
		d := filepath.Join(base, fmt.Sprintf("victims%d", n))
		must(t, os.Mkdir(d, 0o755))
		vfile, vdir = makeVictims(t, d)
		return vfile, vdir, func() string { return describePaths(t, vfile) + describePaths(t, vdir) }
	}

	names := append(append([]string(nil), stateFileNames...), stateDirNames...)
	n := 0
	for _, cmd := range []string{"copy", "move"} {
		for _, name := range names {
			for _, target := range []string{"file", "dir"} {
				t.Run(fmt.Sprintf("before/%s/%s->%s", cmd, name, target), func(t *testing.T) {
					n++
					vfile, vdir, victims := victimsOf(t, n)
					want := victims()
					src, before := buildSmallSrc(t, base, fmt.Sprintf("src%d", n), 40)
					dst := filepath.Join(base, fmt.Sprintf("dst%d", n))
					state := filepath.Join(dst, ".hlcp-state")
					must(t, os.Mkdir(dst, 0o755))
					must(t, os.Mkdir(state, 0o700))
					victim := vfile
					if target == "dir" {
						victim = vdir
					}
					must(t, os.Symlink(victim, filepath.Join(state, name)))
					r := run(t, nil, cmd, "--progress=none", src, dst)
					if got := victims(); got != want {
						t.Fatalf("hlcp %s with %s planted as a symlink to %s changed the victim (exit %d)\nbefore:\n%s\nafter:\n%s\nstderr:\n%s", cmd, name, victim, r.code, want, got, r.stderr)
					}
					switch r.code {
					case 2:
						if !isOneLine(r.stderr) {
							t.Errorf("a refusal should be one line, got:\n%s", r.stderr)
						}
						if fi, err := os.Lstat(filepath.Join(state, name)); err != nil || fi.Mode().Type() != fs.ModeSymlink {
							t.Errorf("a refused run removed or replaced the planted %s: %v %v", name, fi, err)
						}
					case 0:
						checkExact(t, before, dst, compareOpts())
						if cmd == "move" {
							if ents, _ := os.ReadDir(src); len(ents) != 0 {
								t.Errorf("the move exited 0 and left %d entries in SRC", len(ents))
							}
						}
					default:
						t.Errorf("exit %d, want 2 (refused) or 0 (an exact copy)\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
					}
				})
			}
		}
	}

	// While a job runs. A per-path error is made too, so that the error
	// log is written: before the copy, a source file vanishes; after it,
	// a source file changes, which the move then keeps.
	cases := []struct {
		cmd, point string
		replace    bool // also replace the names that exist with symlinks
	}{
		{"copy", "saved-mkdir", false},
		{"copy", "saved-copy", false},
		{"move", "saved-mkdir", false},
		{"move", "saved-finish", false},
		{"move", "saved-remove", false},
		{"copy", "saved-mkdir", true},
		{"move", "saved-remove", true},
	}
	for _, c := range cases {
		what := "missing"
		if c.replace {
			what = "all"
		}
		t.Run(fmt.Sprintf("during/%s/%s/%s", c.cmd, c.point, what), func(t *testing.T) {
			n++
			vfile, vdir, victims := victimsOf(t, n)
			want := victims()
			src, _ := buildSmallSrc(t, base, fmt.Sprintf("src%d", n), 200)
			dst := filepath.Join(base, fmt.Sprintf("dst%d", n))
			state := filepath.Join(dst, ".hlcp-state")
			// The file that vanishes or changes: the one with a
			// single link that the copy and the move reach last (they
			// go in inode order), far from where the job stops.
			var changing string
			var maxIno uint64
			filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
				if err != nil || !fi.Mode().IsRegular() {
					return nil
				}
				if st := fi.Sys().(*syscall.Stat_t); st.Nlink == 1 && st.Ino > maxIno {
					changing, maxIno = p, st.Ino
				}
				return nil
			})
			if changing == "" {
				t.Fatal("no file with a single link in SRC")
			}
			vanish := c.point == "saved-mkdir" || c.point == "saved-copy"
			p := startPaused(t, c.point, c.cmd, "--progress=none", "-j", "2", src, dst)
			var before *testutil.Tree
			var err error
			if vanish {
				keepTimes(t, changing, func() { must(t, os.Remove(changing)) })
				before, err = testutil.Snapshot(src, compareOpts())
				must(t, err)
			} else {
				// Copied already: DST has it as it was.
				before, err = testutil.Snapshot(src, compareOpts())
				must(t, err)
				f, err := os.OpenFile(changing, os.O_WRONLY|os.O_APPEND, 0)
				must(t, err)
				_, err = f.WriteString("changed after its copy")
				must(t, err)
				must(t, f.Close())
			}
			var planted, replaced []string
			for _, name := range names {
				victim := vfile
				if name == "scan" || name == "sorttmp" {
					victim = vdir
				}
				at := filepath.Join(state, name)
				if _, err := os.Lstat(at); err == nil {
					if !c.replace {
						continue
					}
					must(t, os.RemoveAll(at))
					replaced = append(replaced, name)
				} else {
					planted = append(planted, name)
				}
				must(t, os.Symlink(victim, at))
			}
			t.Logf("planted at %v; replaced %v", planted, replaced)
			r := p.resume(t)
			if got := victims(); got != want {
				t.Fatalf("symlinks planted in the state directory during the job: the victim changed (exit %d)\nbefore:\n%s\nafter:\n%s\nstderr:\n%s", r.code, want, got, r.stderr)
			}
			t.Logf("exit %d\n%s", r.code, r.stderr)
			switch {
			case r.code == 3 && !c.replace:
				// The symlinks planted at names hlcp makes later are
				// replaced or refused, never followed: the copy is
				// complete (but for what vanished), whatever became
				// of the state directory.
				rel, _ := filepath.Rel(src, changing)
				why := rel + ": open: vanished since the scan"
				if !vanish {
					why = rel + ": kept in SRC"
				}
				if !strings.Contains(r.stderr, why) {
					t.Errorf("stderr lacks %q:\n%s", why, r.stderr)
				}
				checkExactExcept(t, before, dst, ".hlcp-state")
				if c.cmd == "move" {
					var left []string
					filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
						if err == nil && !fi.IsDir() {
							left = append(left, p)
						}
						return nil
					})
					if wantLeft := []string{changing}; vanish && len(left) != 0 || !vanish && !slices.Equal(left, wantLeft) {
						t.Errorf("the move left %v in SRC", left)
					}
				}
			case c.replace && (r.code == 2 || r.code == 3 || r.code == 4):
				// State files replaced under a running job: it may
				// stop; it never follows them.
			default:
				t.Errorf("exit %d, want 3 (the %s source file reported)\nstdout:\n%s\nstderr:\n%s", r.code, map[bool]string{true: "vanished", false: "changed"}[vanish], r.stdout, r.stderr)
			}
		})
	}
}

// TestStateDirSwappedByDstOwner: DST belongs to user nobody, who can
// rename what is in it. While root's copy (or move) is stopped at a
// checkpoint, nobody renames the state directory away and puts a symlink
// to a directory of root's in its place: the job finishes without writing
// anything there. And a state directory that nobody made (with a symlink
// in it) before root's job started is refused, naming its owner.
func TestStateDirSwappedByDstOwner(t *testing.T) {
	for _, c := range []struct{ cmd, point string }{
		{"copy", "saved-mkdir"},
		{"copy", "saved-copy"},
		{"move", "saved-finish"},
		{"move", "saved-remove"},
	} {
		t.Run("swap/"+c.cmd+"/"+c.point, func(t *testing.T) {
			base, _, dst := nobodyDirs(t)
			_, vdir := makeVictims(t, base)
			want := describePaths(t, vdir)
			src, before := buildSmallSrc(t, base, "src", 100)
			must(t, os.Mkdir(dst, 0o755))
			must(t, os.Chown(dst, 65534, 65534))
			p := startPaused(t, c.point, c.cmd, "--progress=none", src, dst)
			asNobody(t, `mv "$1/.hlcp-state" "$1/old-state" && ln -s "$2" "$1/.hlcp-state"`, dst, vdir)
			r := p.resume(t)
			t.Logf("exit %d\n%s", r.code, r.stderr)
			if got := describePaths(t, vdir); got != want {
				t.Fatalf("the job wrote through the swapped-in symlink (exit %d)\nbefore:\n%s\nafter:\n%s\nstderr:\n%s", r.code, want, got, r.stderr)
			}
			if r.code != 0 && r.code != 3 {
				t.Errorf("exit %d: the job should finish in the state directory it opened\n%s", r.code, r.stderr)
			} else {
				checkExactExcept(t, before, dst, ".hlcp-state", "old-state")
			}
			if fi, err := os.Lstat(filepath.Join(dst, ".hlcp-state")); err != nil || fi.Mode().Type() != fs.ModeSymlink {
				t.Errorf("the symlink that replaced the state directory: %v %v", fi, err)
			}
		})
	}

	// Planted before the job by the owner of DST.
	for _, c := range []struct {
		name, script, want string
	}{
		{"dir-0755", `mkdir -m 0755 "$1/.hlcp-state" && ln -s "$2/crontab" "$1/.hlcp-state/errors.log"`, "owned by uid 65534"},
		{"dir-0700", `mkdir -m 0700 "$1/.hlcp-state" && ln -s "$2/crontab" "$1/.hlcp-state/state.json.tmp"`, "owned by uid 65534"},
		{"symlink", `ln -s "$2" "$1/.hlcp-state"`, "symlink"},
	} {
		t.Run("planted/"+c.name, func(t *testing.T) {
			base, _, dst := nobodyDirs(t)
			_, vdir := makeVictims(t, base)
			want := describePaths(t, vdir)
			src, _ := buildSmallSrc(t, base, "src", 30)
			must(t, os.Mkdir(dst, 0o755))
			must(t, os.Chown(dst, 65534, 65534))
			asNobody(t, c.script, dst, vdir)
			planted := describePaths(t, dst)
			for _, cmd := range []string{"copy", "move"} {
				r := run(t, nil, cmd, "--progress=none", src, dst)
				if r.code != 2 || !strings.Contains(r.stderr, "refusing the state directory") || !strings.Contains(r.stderr, c.want) || !isOneLine(r.stderr) {
					t.Errorf("%s into a DST where nobody made .hlcp-state: exit %d, want 2 and a one-line refusal saying %q\n%s", cmd, r.code, c.want, r.stderr)
				}
				if got := describePaths(t, vdir); got != want {
					t.Fatalf("%s changed the victim\nbefore:\n%s\nafter:\n%s", cmd, want, got)
				}
				if got := describePaths(t, dst); got != planted {
					t.Errorf("a refused %s changed DST\nbefore:\n%s\nafter:\n%s", cmd, planted, got)
				}
				if _, err := os.Lstat(filepath.Join(src, "daily.0")); err != nil {
					t.Errorf("a refused %s changed SRC: %v", cmd, err)
				}
			}
		})
	}
}

// checkStateModes walks a state directory: it and its subdirectories must
// be mode 0700, its files 0600, and nothing else may be there.
func checkStateModes(t *testing.T, state string) {
	t.Helper()
	n := 0
	err := filepath.Walk(state, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		n++
		perm := fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch {
		case fi.IsDir():
			if perm != 0o700 {
				t.Errorf("%s: directory mode %v, want 0700", p, fi.Mode())
			}
		case fi.Mode().IsRegular():
			if perm != 0o600 {
				t.Errorf("%s: file mode %v, want 0600", p, fi.Mode())
			}
		default:
			t.Errorf("%s: a %v in the state directory", p, fi.Mode().Type())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", state, err)
	}
	if n < 3 {
		t.Fatalf("the state directory %s holds only %d entries", state, n-1)
	}
}

// TestStateFileModes: with the usual umask 022, every file of a job's
// state is 0600 and every directory 0700: the state (which names every
// path of SRC) is readable by no one else, at every phase it can be
// left in.
func TestStateFileModes(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	base := t.TempDir()
	src, _ := buildSmallSrc(t, base, "src", 200)
	cases := []struct {
		name, cmd, crash string
		state            bool // --state DIR instead of DST/.hlcp-state
	}{
		{"copy-killed-after-scan", "copy", "sort", false},
		{"copy-killed-in-mkdir", "copy", "mkdir", false},
		{"copy-killed-in-copy", "copy", "copy", false},
		{"copy-killed-in-finish", "copy", "finish", false},
		{"copy-killed-in-copy-state-elsewhere", "copy", "copy", true},
		{"move-killed-in-remove", "move", "remove", false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := src
			if c.cmd == "move" {
				s, _ = buildSmallSrc(t, base, fmt.Sprintf("msrc%d", i), 200)
			}
			dst := filepath.Join(base, fmt.Sprintf("dst%d", i))
			state := filepath.Join(dst, ".hlcp-state")
			args := []string{c.cmd, "-q"}
			if c.state {
				state = filepath.Join(base, fmt.Sprintf("state%d", i))
				args = append(args, "--state", state)
			}
			crashAt(t, c.crash, append(args, s, dst)...)
			checkStateModes(t, state)
		})
	}
	// A move that kept a file in SRC keeps its state, marker of removed
	// sources and error log included.
	t.Run("move-kept-a-file", func(t *testing.T) {
		s, _ := buildSmallSrc(t, base, "ksrc", 200)
		dst := filepath.Join(base, "kdst")
		crashAt(t, "remove", "move", "-q", s, dst)
		must(t, os.WriteFile(filepath.Join(s, "daily.0", "kept"), []byte("after the scan"), 0o644))
		r := run(t, nil, "move", "--progress=none", s, dst)
		if r.code != 3 {
			t.Fatalf("move: exit %d, want 3\n%s", r.code, r.stderr)
		}
		state := filepath.Join(dst, ".hlcp-state")
		for _, n := range []string{"moved", "errors.log", "copied"} {
			if _, err := os.Lstat(filepath.Join(state, n)); err != nil {
				t.Errorf("the kept state has no %s: %v", n, err)
			}
		}
		checkStateModes(t, state)
	})
}

// TestRestartForeignState: --state naming a directory that is not hlcp's
// (someone's project, with a state.json of its own), a regular file, or
// a symlink to a directory: refused, with or without --restart, and
// nothing there is deleted or changed.
func TestRestartForeignState(t *testing.T) {
	base := t.TempDir()
	src, _ := buildSmallSrc(t, base, "src", 30)
	x := filepath.Join(base, "project")
	must(t, os.Mkdir(x, 0o700))
	must(t, os.WriteFile(filepath.Join(x, "state.json"), []byte(`{"version": 2, "owner": "another program"}`+"\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(x, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o600))
	f := filepath.Join(base, "a-file")
	must(t, os.WriteFile(f, []byte("not a directory\n"), 0o600))
	ldir := filepath.Join(base, "linked")
	must(t, os.Mkdir(ldir, 0o700))
	must(t, os.WriteFile(filepath.Join(ldir, "keep"), []byte("keep me\n"), 0o600))
	l := filepath.Join(base, "a-symlink")
	must(t, os.Symlink(ldir, l))
	watch := []string{x, f, ldir, l}
	describe := func() string {
		var b strings.Builder
		for _, p := range watch {
			b.WriteString(describePaths(t, p))
		}
		return b.String()
	}
	want := describe()

	for _, c := range []struct {
		name, state, why string
	}{
		{"foreign-dir", x, "not an hlcp state directory"},
		{"regular-file", f, "not a directory"},
		{"symlink-to-dir", l, "symlink"},
	} {
		for _, args := range [][]string{
			{"copy", "--restart"},
			{"copy"},
			{"move", "--restart"},
			{"move", "--restart", "--discard-moved-data"},
		} {
			t.Run(c.name+"/"+strings.Join(args, " "), func(t *testing.T) {
				dst := filepath.Join(base, "dst")
				r := run(t, nil, append(args, "--progress=none", "--state", c.state, src, dst)...)
				if r.code != 2 || !strings.Contains(r.stderr, c.why) || !isOneLine(r.stderr) {
					t.Errorf("exit %d, want 2 and one line saying %q\n%s", r.code, c.why, r.stderr)
				}
				if got := describe(); got != want {
					t.Fatalf("a refused run changed what --state named\nbefore:\n%s\nafter:\n%s", want, got)
				}
				if _, err := os.Lstat(dst); err == nil {
					t.Errorf("a refused run created DST")
					os.RemoveAll(dst)
				}
				if _, err := os.Lstat(filepath.Join(src, "daily.0")); err != nil {
					t.Errorf("a refused run changed SRC: %v", err)
				}
			})
		}
		t.Run(c.name+"/status", func(t *testing.T) {
			dst := filepath.Join(base, "dst-status")
			must(t, os.MkdirAll(dst, 0o755))
			r := run(t, nil, "status", "--state", c.state, dst)
			if r.code != 2 {
				t.Errorf("status: exit %d, want 2\n%s%s", r.code, r.stdout, r.stderr)
			}
			if got := describe(); got != want {
				t.Fatalf("status changed what --state named")
			}
		})
	}
}

// TestDamagedStateAfterPartialMove is the reproduction: a move
// that removed source paths but kept one keeps its state; state.json is
// then cut. Neither a copy of another tree nor the move itself, with or
// without --restart, may go on from it or discard it without
// --discard-moved-data: DST holds the only copy of what was moved.
func TestDamagedStateAfterPartialMove(t *testing.T) {
	base := t.TempDir()
	src, dst, other := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "other")
	for _, d := range []string{"a/b", "c"} {
		must(t, os.MkdirAll(filepath.Join(src, d), 0o755))
		must(t, os.MkdirAll(filepath.Join(other, d), 0o755))
	}
	for i := 0; i < 20; i++ {
		must(t, os.WriteFile(filepath.Join(src, "a", "b", fmt.Sprintf("f%02d", i)), []byte(fmt.Sprintf("moved data %d\n", i)), 0o644))
		must(t, os.WriteFile(filepath.Join(other, "a", "b", fmt.Sprintf("f%02d", i)), []byte(fmt.Sprintf("OTHER TREE %d, longer\n", i)), 0o644))
	}
	must(t, os.Link(filepath.Join(src, "a", "b", "f01"), filepath.Join(src, "c", "f01-link")))
	must(t, os.WriteFile(filepath.Join(src, "c", "keep"), []byte("kept\n"), 0o644))

	crashAt(t, "remove", "move", "-q", src, dst)
	// The source file changes after its copy: the move keeps it.
	must(t, os.WriteFile(filepath.Join(src, "c", "keep"), []byte("kept, and changed since its copy\n"), 0o644))
	r := run(t, nil, "move", "--progress=none", src, dst)
	if r.code != 3 || !strings.Contains(r.stderr, "c/keep: kept in SRC") {
		t.Fatalf("move: exit %d, want 3 with c/keep kept\n%s", r.code, r.stderr)
	}
	if _, err := os.Lstat(filepath.Join(src, "a", "b", "f00")); err == nil {
		t.Fatalf("the move removed nothing")
	}
	if r := run(t, nil, "status", dst); r.code != 0 || !strings.Contains(r.stdout, "phase         remove") {
		t.Fatalf("status after the partial move: exit %d, want the job in phase remove\n%s%s", r.code, r.stdout, r.stderr)
	}
	describeDst := func() string {
		var b strings.Builder
		for _, d := range []string{"a", "c"} {
			b.WriteString(describePaths(t, filepath.Join(dst, d)))
		}
		return b.String()
	}
	want := describeDst()
	if !strings.Contains(want, `"b/f00"`) {
		t.Fatalf("DST lacks the moved files:\n%s", want)
	}
	must(t, os.Truncate(filepath.Join(dst, ".hlcp-state", "state.json"), 100))

	for _, args := range [][]string{
		{"copy", "--restart", other, dst},
		{"move", "--restart", src, dst},
		{"copy", other, dst},
		{"move", src, dst},
		{"move", "--discard-moved-data", src, dst},
	} {
		r := run(t, nil, append([]string{args[0], "--progress=none"}, args[1:]...)...)
		if r.code != 2 || !strings.Contains(r.stderr, "--discard-moved-data") || !strings.Contains(r.stderr, "damaged") {
			t.Errorf("hlcp %v on the damaged state of a move that removed sources: exit %d, want 2 naming --discard-moved-data\n%s", args, r.code, r.stderr)
		}
		if got := describeDst(); got != want {
			t.Fatalf("hlcp %v changed what the move moved into DST\nbefore:\n%s\nafter:\n%s", args, want, got)
		}
		if _, err := os.Lstat(filepath.Join(dst, ".hlcp-state", "moved")); err != nil {
			t.Fatalf("hlcp %v removed the move's marker: %v", args, err)
		}
	}
	if r := run(t, nil, "status", dst); r.code != 2 || !strings.Contains(r.stderr, "damaged") {
		t.Errorf("status on the damaged state: exit %d, want 2 saying it is damaged\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Lstat(filepath.Join(src, "c", "keep")); err != nil {
		t.Errorf("the kept source file is gone: %v", err)
	}

	// Asked for in so many words: allowed.
	r = run(t, nil, "copy", "--restart", "--discard-moved-data", "--progress=none", other, dst)
	if r.code != 0 && r.code != 3 {
		t.Fatalf("copy --restart --discard-moved-data: exit %d, want 0 or 3\n%s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "a", "b", "f00")); !bytes.HasPrefix(b, []byte("OTHER TREE 0")) {
		t.Errorf("after --discard-moved-data, a/b/f00 has %q, want the other tree's", b)
	}
}

// damageFile damages the file p in one of the ways of TestTruncatedStateFiles;
// false when the file is too small for it.
func damageFile(t *testing.T, p, how string) bool {
	t.Helper()
	fi, err := os.Stat(p)
	must(t, err)
	size := fi.Size()
	switch how {
	case "zero":
		must(t, os.Truncate(p, 0))
	case "page":
		cut := (size - 1) / 4096 * 4096
		if cut == 0 || size <= 4096 {
			return false
		}
		must(t, os.Truncate(p, cut))
	case "mid-record":
		if size <= 37 {
			return false
		}
		must(t, os.Truncate(p, size-37))
	case "flip":
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		must(t, err)
		defer f.Close()
		b := make([]byte, 1)
		_, err = f.ReadAt(b, size/2)
		must(t, err)
		b[0] ^= 0xff
		_, err = f.WriteAt(b, size/2)
		must(t, err)
	default:
		t.Fatalf("damage %q?", how)
	}
	return true
}

// TestTruncatedStateFiles: a copy killed in its copy phase, then one of
// its state files cut to nothing, cut at a page, cut inside a record, or
// with one byte flipped. A rerun either refuses (the state is damaged:
// --restart) or makes an exact copy, never a copy with paths missing; a
// refusal stays a refusal on every later rerun (never "rerun to resume"
// forever); --restart then makes an exact copy.
func TestTruncatedStateFiles(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	must(t, os.Mkdir(src, 0o755))
	paths, inodes := testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 4, Files: 400, DirsPerLevel: 5, Depth: 3, ChangeRate: 0.15, Seed: 21, MaxSize: 2000})
	t.Logf("tree: %d paths, %d inodes", paths, inodes)
	before, err := testutil.Snapshot(src, compareOpts())
	must(t, err)

	n := 0
	for _, file := range []string{"plan", "links", "dirs", "dirs.idx", "state.json"} {
		for _, how := range []string{"zero", "page", "mid-record", "flip"} {
			t.Run(file+"/"+how, func(t *testing.T) {
				n++
				dst := filepath.Join(base, fmt.Sprintf("dst%d", n))
				crashAt(t, "copy", "copy", "-q", src, dst)
				p := filepath.Join(dst, ".hlcp-state", file)
				if fi, err := os.Stat(p); err == nil {
					t.Logf("%s: %d bytes", file, fi.Size())
				}
				if !damageFile(t, p, how) {
					t.Skipf("%s is too small to be damaged that way", file)
				}
				r := run(t, nil, "copy", "--progress=none", src, dst)
				t.Logf("rerun: exit %d\n%s", r.code, r.stderr)
				switch r.code {
				case 0:
					checkExact(t, before, dst, compareOpts())
				case 2, 4:
					checkRefusal(t, "rerun", r)
					// And again: the damage is not forgotten.
					r2 := run(t, nil, "copy", "--progress=none", src, dst)
					if r2.code != 2 && r2.code != 4 {
						t.Errorf("second rerun after a refusal: exit %d, want a refusal again\n%s%s", r2.code, r2.stdout, r2.stderr)
					} else {
						checkRefusal(t, "second rerun", r2)
					}
					if s := run(t, nil, "status", dst); s.code != 2 || !strings.Contains(s.stderr, "damaged") {
						t.Errorf("status on the damaged state: exit %d, want 2 saying it is damaged\n%s%s", s.code, s.stdout, s.stderr)
					}
				default:
					t.Errorf("rerun on a damaged %s: exit %d, want a refusal (2 or 4) or an exact copy (0)\n%s%s", file, r.code, r.stdout, r.stderr)
				}
				mustCopy(t, src, dst, "--restart")
				checkExact(t, before, dst, compareOpts())
			})
		}
	}
}

// checkRefusal checks the message of a run that refused a damaged state: it
// says so, points to --restart, and does not send the user round in
// circles.
func checkRefusal(t *testing.T, what string, r result) {
	t.Helper()
	msg := r.stderr
	if !strings.Contains(msg, "damaged") || !strings.Contains(msg, "--restart") {
		t.Errorf("%s: exit %d; the message should say the state is damaged and mention --restart:\n%s", what, r.code, msg)
	}
	if strings.Contains(msg, "rerun the same command") || strings.Contains(msg, "rerun to resume") {
		t.Errorf("%s: exit %d; the message tells the user to rerun the command that just refused:\n%s", what, r.code, msg)
	}
}

// TestVersion: --version names hlcp and the Go version it was built
// with, for bug reports.
func TestVersion(t *testing.T) {
	r := run(t, nil, "--version")
	if r.code != 0 {
		t.Fatalf("hlcp --version: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "hlcp ") || !strings.Contains(lines[0], runtime.Version()) {
		t.Errorf("hlcp --version printed %q; want one line starting with \"hlcp \" that names %s", r.stdout, runtime.Version())
	}
}
