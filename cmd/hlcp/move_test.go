package main

// End-to-end tests of issue 15's move, rerun and message items: the
// remover's rename race (item 6), DST made durable before the first
// source path goes (item 7), sources changed since their copy (item 8),
// reruns of finished jobs (item 10), messages (item 11) and a mount below
// SRC that comes back with another device number (item 12).
//
// Helpers here start with "mt", so that they cannot collide with those
// of the other test files of the package.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/testutil"
)

// mtWrite writes files (path relative to root -> content), creating their
// directories.
func mtWrite(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, data := range files {
		p := filepath.Join(root, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(data), 0o644))
	}
}

// mtSmallTree builds a small tree in root (which must not exist): files in
// a few directories, a hard link, a symlink, an empty directory.
func mtSmallTree(t *testing.T, root string) {
	t.Helper()
	must(t, os.Mkdir(root, 0o755))
	mtWrite(t, root, map[string]string{
		"top":       "top file",
		"a/f1":      "content one",
		"a/f2":      "content two",
		"a/b/deep":  "deep content",
		"c/other":   "other content",
		"c/d/e/far": "far away",
	})
	must(t, os.Link(filepath.Join(root, "a", "f1"), filepath.Join(root, "c", "f1-link")))
	must(t, os.Symlink("../top", filepath.Join(root, "a", "sym")))
	must(t, os.Mkdir(filepath.Join(root, "empty"), 0o755))
}

// mtFiles lists the non-directories below root (relative, sorted), and
// fails on an unreadable tree; a missing root is an empty list.
func mtFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == root {
				return filepath.SkipAll
			}
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	must(t, err)
	return out
}

// mtQuarantined lists the names below root that the remover uses for a
// path set aside before its unlink.
func mtQuarantined(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".hlcp-rm-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// mtReadFile returns a file's content, or fails.
func mtReadFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return string(b)
}

// mtProcState is the state letter of process pid in /proc/PID/stat (the
// field after the command name, which may itself hold spaces and
// parentheses), or 0 when it cannot be read.
func mtProcState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// mtTmpfs mounts a private tmpfs with the given options on a new
// temporary directory (root only), unmounted at the end of the test.
func mtTmpfs(t *testing.T, opts string) string {
	t.Helper()
	if !isRoot() {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		t.Skipf("mount -t tmpfs -o %s: %v", opts, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// TestMoveRenameRace (issue 15, item 6): a new version of a source file
// is renamed over its path in the instant between the remover's last
// check of the old version and its removal. The remover must not delete
// the new version: it is the one set aside under the quarantine name, is
// found not to be the checked inode, goes back under its own name, and is
// kept and listed. (The old code unlinked whatever was at the path then,
// and exited 0: the new version was in neither tree.)
//
// The test waits until every thread of hlcp is stopped, and checks that
// the path has not been set aside yet. A pause hook that only sends
// kill(getpid(), SIGSTOP) (as at commit a8afa8d) lets the calling thread
// run on into its rename before the group stop reaches it; such an
// attempt cannot stage the race: it is let finish, and the test tries
// again with a fresh tree.
func TestMoveRenameRace(t *testing.T) {
	const attempts = 40
	for i := 1; i <= attempts; i++ {
		if mtRenameRace(t, i) {
			return
		}
	}
	t.Fatalf("in %d attempts, hlcp was never stopped at remove-rename before it set the path aside (see testhook.Pause)", attempts)
}

// mtAllStopped reports whether every thread of process pid is stopped.
func mtAllStopped(pid int) bool {
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

// mtRenameRace is one attempt of TestMoveRenameRace. It reports false,
// after letting the move finish, when the pause came too late to stage
// the race.
func mtRenameRace(t *testing.T, attempt int) bool {
	t.Helper()
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must(t, os.Mkdir(src, 0o755))
	// One file: the first path the remover sets aside is this one.
	f := filepath.Join(src, "f")
	const oldData, newData = "old version", "NEW version, written during the move"
	must(t, os.WriteFile(f, []byte(oldData), 0o644))
	var orig unix.Stat_t
	must(t, unix.Lstat(f, &orig))

	cmd := exec.Command(hlcpBin, "move", "--progress=plain", src, dst)
	cmd.Env = append(os.Environ(), "HLCP_TEST_PAUSE_AT=remove-rename")
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	must(t, cmd.Start())
	pid := cmd.Process.Pid
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill() // SIGKILL ends a stopped process too
			<-waited
		}
	}()
	wait := func() error {
		select {
		case err := <-waited:
			exited = true
			return err
		case <-time.After(2 * time.Minute):
			t.Fatalf("hlcp move did not end after SIGCONT\nstderr:\n%s", se.String())
		}
		return nil
	}

	// Wait until it has stopped itself, all its threads, at the pause
	// point (just before the rename).
	deadline := time.Now().Add(60 * time.Second)
	for mtProcState(pid) != 'T' || !mtAllStopped(pid) {
		select {
		case err := <-waited:
			exited = true
			t.Fatalf("hlcp move ended (%v) without stopping at remove-rename\nstdout:\n%s\nstderr:\n%s", err, so.String(), se.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hlcp move did not stop at remove-rename within a minute (state %q)", mtProcState(pid))
		}
		time.Sleep(time.Millisecond)
	}
	var st unix.Stat_t
	if err := unix.Lstat(f, &st); err != nil || st.Ino != orig.Ino || len(mtQuarantined(t, src)) > 0 {
		// The remover's thread went on into its rename before the stop
		// reached it: too late for the race.
		must(t, cmd.Process.Signal(syscall.SIGCONT))
		err := wait()
		t.Logf("attempt %d: the stop came after the path was set aside; the run ended with %v; trying again", attempt, err)
		return false
	}
	if b, err := os.ReadFile(filepath.Join(dst, "f")); err != nil || string(b) != oldData {
		t.Fatalf("at the pause, DST's f is %q (%v), want the old version copied", b, err)
	}
	// A new version, renamed over the path (as editors and rsync do).
	tmp := filepath.Join(src, ".f.new")
	must(t, os.WriteFile(tmp, []byte(newData), 0o644))
	must(t, os.Rename(tmp, f))
	must(t, cmd.Process.Signal(syscall.SIGCONT))
	err := wait()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	stderr := se.String()
	t.Logf("attempt %d staged the race", attempt)
	if code != 3 {
		t.Errorf("exit %d, want 3 (the new version kept)\nstdout:\n%s\nstderr:\n%s", code, so.String(), stderr)
	}
	if b, err := os.ReadFile(f); err != nil {
		t.Errorf("the new version renamed over SRC's f during the move is gone: %v", err)
	} else if string(b) != newData {
		t.Errorf("SRC's f has %q, want the new version %q", b, newData)
	}
	if !strings.Contains(stderr, "f: kept in SRC: changed while") {
		t.Errorf("stderr does not list f as kept, changed while checked:\n%s", stderr)
	}
	if q := mtQuarantined(t, src); len(q) > 0 {
		t.Errorf("quarantine names left in SRC: %v", q)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "f")); err != nil || string(b) != oldData {
		t.Errorf("DST's f is %q (%v), want the old version %q", b, err, oldData)
	}
	return true
}

// TestMoveSyncsBeforeUnlink (issue 15, item 7): a move killed once its
// journal reached phase remove is rerun under strace. Whatever the earlier
// run did, the rerun makes DST durable (syncfs of DST) before it touches
// the first source path (its quarantine rename, or an unlink). The old
// code synced only at the end of the copy: a rerun in phase remove
// unlinked source files with nothing synced in that run.
func TestMoveSyncsBeforeUnlink(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	base, err := filepath.EvalSymlinks(t.TempDir())
	must(t, err)
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	mtSmallTree(t, src)
	crashAt(t, "remove", "move", "-q", src, dst)

	out := filepath.Join(base, "strace.txt")
	cmd := exec.Command(strace, "-f", "-y", "-e", "trace=syncfs,renameat2,renameat,unlinkat", "-o", out, hlcpBin, "move", "-q", src, dst)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("strace hlcp move (rerun): %v\n%s", err, b)
	}
	if files := mtFiles(t, src); len(files) > 0 {
		t.Fatalf("the rerun left source files: %v", files)
	}
	b, err := os.ReadFile(out)
	must(t, err)
	// With -y every fd is shown with its path: <SRC> or <SRC/dir>.
	inSrc := func(l string) bool { return strings.Contains(l, "<"+src+">") || strings.Contains(l, "<"+src+"/") }
	inDst := func(l string) bool { return strings.Contains(l, "<"+dst+">") || strings.Contains(l, "<"+dst+"/") }
	// A syncfs counts once it has returned: on its own line, or on the
	// "<... syncfs resumed>" line of the thread that began it.
	synced, first := false, ""
	pending := map[string]bool{} // thread id -> its unfinished syncfs is DST's
	for _, l := range strings.Split(string(b), "\n") {
		fl := strings.Fields(l)
		if len(fl) == 0 {
			continue
		}
		tid := fl[0]
		switch {
		case strings.Contains(l, "syncfs(") && strings.Contains(l, "<unfinished"):
			pending[tid] = inDst(l)
		case strings.Contains(l, "syncfs(") && inDst(l):
			synced = true
		case strings.Contains(l, "<... syncfs resumed>"):
			synced = synced || pending[tid]
			delete(pending, tid)
		}
		isRemoval := strings.Contains(l, "renameat2(") || strings.Contains(l, "renameat(") || strings.Contains(l, "unlinkat(")
		if isRemoval && inSrc(l) {
			first = l
			break
		}
	}
	if first == "" {
		t.Fatalf("no rename or unlink of a SRC path in the rerun's trace:\n%s", b)
	}
	if !synced {
		t.Errorf("the rerun touched a source path before any syncfs of DST returned: %s\ntrace:\n%s", first, b)
	}
}

// TestMoveKeepsChangedSinceCopy (issue 15, item 8): after a move was
// killed at phase remove, one source file changes in a way that size and
// mtime do not show. The rerun keeps it (exit 3, listed) and moves
// everything else; DST's copy is left as it was. A rewrite that changes
// nothing (same bytes, mtime restored) moves ctime only: a full comparison
// finds the copy equal and the file goes (exit 0). The old code compared
// type, size and mtime only, and removed all of them.
func TestMoveKeepsChangedSinceCopy(t *testing.T) {
	const target = "a/f2"
	const orig = "content two"
	sameSizeRewrite := func(data string) func(t *testing.T, p string) {
		return func(t *testing.T, p string) {
			fi, err := os.Stat(p)
			must(t, err)
			st := fi.Sys().(*syscall.Stat_t)
			atime := time.Unix(st.Atim.Sec, st.Atim.Nsec)
			if len(data) != int(fi.Size()) {
				t.Fatalf("test bug: %q is not %d bytes", data, fi.Size())
			}
			must(t, os.WriteFile(p, []byte(data), 0o644))
			must(t, os.Chtimes(p, atime, fi.ModTime()))
			fi2, err := os.Stat(p)
			must(t, err)
			if !fi2.ModTime().Equal(fi.ModTime()) || fi2.Size() != fi.Size() {
				t.Fatalf("size and mtime not restored: %v %d", fi2.ModTime(), fi2.Size())
			}
		}
	}
	cases := []struct {
		name     string
		rootOnly bool
		change   func(t *testing.T, p string)
		kept     bool
		why      string // in the reason given for keeping it
	}{
		{"same size and mtime, other content", false, sameSizeRewrite("CONTENT TWO"), true, "DST differs: content"},
		{"chmod 0600", false, func(t *testing.T, p string) { must(t, os.Chmod(p, 0o600)) }, true, "DST differs: mode"},
		{"chown", true, func(t *testing.T, p string) { must(t, os.Lchown(p, 4321, -1)) }, true, "DST differs: owner"},
		{"xattr added", false, func(t *testing.T, p string) {
			if err := unix.Lsetxattr(p, "user.late", []byte("added after the copy"), 0); err != nil {
				t.Skipf("the filesystem refuses a user xattr: %v", err)
			}
		}, true, "lacks the xattr"},
		{"same size and mtime, same content", false, sameSizeRewrite(orig), false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.rootOnly && !isRoot() {
				t.Skip("needs root to chown")
			}
			base := t.TempDir()
			src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
			mtSmallTree(t, src)
			all := mtFiles(t, src)
			crashAt(t, "remove", "move", "-q", src, dst)
			p := filepath.Join(src, target)
			if got := mtReadFile(t, p); got != orig {
				t.Fatalf("test bug: %s has %q", target, got)
			}
			var before unix.Stat_t
			must(t, unix.Lstat(p, &before))
			c.change(t, p)
			var want unix.Stat_t
			must(t, unix.Lstat(p, &want))
			wantData := mtReadFile(t, p)
			wantX := mtXattr(p, "user.late")

			r := run(t, nil, "move", "--progress=plain", src, dst)
			if !c.kept {
				if r.code != 0 {
					t.Fatalf("exit %d, want 0: an unchanged file is removed after a full comparison\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
				}
				if left := mtFiles(t, src); len(left) > 0 {
					t.Errorf("left in SRC: %v, want nothing", left)
				}
				if got := mtReadFile(t, filepath.Join(dst, target)); got != orig {
					t.Errorf("DST's %s: %q, want %q", target, got, orig)
				}
				return
			}
			if r.code != 3 {
				t.Errorf("exit %d, want 3 (%s kept)\nstdout:\n%s\nstderr:\n%s", r.code, target, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stderr, target+": kept in SRC") {
				t.Errorf("stderr does not list %s as kept:\n%s", target, r.stderr)
			} else if !strings.Contains(r.stderr, c.why) {
				t.Errorf("the reason given for %s lacks %q:\n%s", target, c.why, r.stderr)
			}
			// Still in SRC, as it was left.
			var got unix.Stat_t
			if err := unix.Lstat(p, &got); err != nil {
				t.Fatalf("%s is gone from SRC: %v", target, err)
			}
			if got.Ino != want.Ino || got.Mode != want.Mode || got.Uid != want.Uid || got.Gid != want.Gid || got.Mtim != want.Mtim || got.Size != want.Size {
				t.Errorf("SRC's %s changed: ino %d mode %o owner %d:%d mtime %v size %d, want ino %d mode %o owner %d:%d mtime %v size %d",
					target, got.Ino, got.Mode, got.Uid, got.Gid, got.Mtim, got.Size, want.Ino, want.Mode, want.Uid, want.Gid, want.Mtim, want.Size)
			}
			if d := mtReadFile(t, p); d != wantData {
				t.Errorf("SRC's %s has %q, want %q", target, d, wantData)
			}
			if x := mtXattr(p, "user.late"); x != wantX {
				t.Errorf("SRC's %s: user.late %q, want %q", target, x, wantX)
			}
			// Everything else moved.
			if left := mtFiles(t, src); strings.Join(left, " ") != target {
				t.Errorf("left in SRC: %v, want only %s", left, target)
			}
			for _, rel := range all {
				if _, err := os.Lstat(filepath.Join(dst, rel)); err != nil {
					t.Errorf("DST lacks %s: %v", rel, err)
				}
			}
			// DST's copy untouched.
			dp := filepath.Join(dst, target)
			var ds unix.Stat_t
			must(t, unix.Lstat(dp, &ds))
			if d := mtReadFile(t, dp); d != orig {
				t.Errorf("DST's %s has %q, want %q", target, d, orig)
			}
			if ds.Mode != before.Mode || ds.Uid != before.Uid || ds.Gid != before.Gid || ds.Mtim != before.Mtim {
				t.Errorf("DST's %s: mode %o owner %d:%d mtime %v, want those of the source as copied: %o %d:%d %v",
					target, ds.Mode, ds.Uid, ds.Gid, ds.Mtim, before.Mode, before.Uid, before.Gid, before.Mtim)
			}
			if x := mtXattr(dp, "user.late"); x != "" {
				t.Errorf("DST's %s got the xattr added in SRC: %q", target, x)
			}
			if _, err := os.Lstat(filepath.Join(dst, ".hlcp-state")); err != nil {
				t.Errorf("the job's state should stay for a rerun: %v", err)
			}
		})
	}
}

// mtXattr is the value of an xattr of path (not followed), "" when it
// has none.
func mtXattr(p, name string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// TestMoveKeepsMetadataNotCopied (issue 15, item 8): a source file has an
// xattr that the destination refuses (8,000 bytes: more than an ext4
// without ea_inode takes in an inode and one block). Its copy lacks it, so
// the move keeps the source (exit 3, listed); the other files go. The old
// code compared type, size and mtime only, and removed it: the xattr was
// lost.
func TestMoveKeepsMetadataNotCopied(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root to loop-mount ext4 and mount a tmpfs")
	}
	dstFS := testutil.MountImage(t, "ext4", 32, "-b", "4096", "-O", "^ea_inode")
	srcFS := mtTmpfs(t, "size=16m,mode=0755")
	src, dst := filepath.Join(srcFS, "src"), filepath.Join(dstFS, "dst")
	must(t, os.Mkdir(src, 0o755))
	mtWrite(t, src, map[string]string{"big": "a file with a large xattr", "d/small": "no xattr"})
	val := bytes.Repeat([]byte("x"), 8000)
	if err := unix.Lsetxattr(filepath.Join(src, "big"), "user.big", val, 0); err != nil {
		t.Skipf("the source (tmpfs) refuses an 8,000-byte user xattr: %v", err)
	}
	probe := filepath.Join(dstFS, "probe")
	must(t, os.WriteFile(probe, nil, 0o644))
	if err := unix.Lsetxattr(probe, "user.big", val, 0); err == nil {
		t.Skip("the destination ext4 takes an 8,000-byte xattr: nothing to refuse")
	}
	must(t, os.Remove(probe))

	r := run(t, nil, "move", "--progress=plain", src, dst)
	if r.code != 3 {
		t.Errorf("exit %d, want 3 (big kept)\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "big: kept in SRC") {
		t.Errorf("stderr does not list big as kept:\n%s", r.stderr)
	}
	if x := mtXattr(filepath.Join(src, "big"), "user.big"); x != string(val) {
		t.Errorf("SRC's big lost its xattr (%d bytes left)", len(x))
	}
	if left := mtFiles(t, src); strings.Join(left, " ") != "big" {
		t.Errorf("left in SRC: %v, want only big", left)
	}
	if got := mtReadFile(t, filepath.Join(dst, "d", "small")); got != "no xattr" {
		t.Errorf("DST's d/small: %q", got)
	}
}

// TestRerunFinished (issue 15, item 10): scripts rerun a command until it
// succeeds, so the rerun of a finished job must succeed and change
// nothing; a DST that is not the finished job's copy is refused (exit 2,
// one line). The old code refused every non-empty DST without a job.
func TestRerunFinished(t *testing.T) {
	type tc struct {
		name string
		fn   func(t *testing.T, src, dst string)
	}
	// The refusal is one line, the last one: "hlcp: ..." (before it,
	// the rerun may have said that it compares the trees).
	oneLineErr := func(t *testing.T, r result) {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		n := 0
		for _, l := range lines {
			if strings.HasPrefix(l, "hlcp: ") {
				n++
			}
		}
		if n != 1 || !strings.HasPrefix(lines[len(lines)-1], "hlcp: ") {
			t.Errorf("want a one-line error message at the end, got:\n%s", r.stderr)
		}
	}
	cases := []tc{
		{"finished copy", func(t *testing.T, src, dst string) {
			mustCopy(t, src, dst)
			r := run(t, nil, "copy", src, dst)
			if r.code != 0 || !strings.Contains(r.stdout, "already complete") {
				t.Errorf("rerun: exit %d, want 0 and \"already complete\"\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			if r := run(t, nil, "verify", "--progress=none", src, dst); r.code != 0 {
				t.Errorf("verify: exit %d\n%s", r.code, r.stdout)
			}
		}},
		{"finished move", func(t *testing.T, src, dst string) {
			if r := run(t, nil, "move", "-q", src, dst); r.code != 0 {
				t.Fatalf("move: exit %d\n%s", r.code, r.stderr)
			}
			if ents, _ := os.ReadDir(src); len(ents) > 0 {
				t.Fatalf("the move left %d entries in SRC", len(ents))
			}
			r := run(t, nil, "move", src, dst)
			if r.code != 0 || !strings.Contains(r.stdout, "nothing left to move") {
				t.Errorf("rerun: exit %d, want 0 and \"nothing left to move\"\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
		}},
		{"copy killed after its state was removed", func(t *testing.T, src, dst string) {
			crashAt(t, "state-removed", "copy", "-q", src, dst)
			if _, err := os.Lstat(filepath.Join(dst, ".hlcp-state")); err == nil {
				t.Fatalf("the kill at state-removed left the state")
			}
			var ss, ds unix.Stat_t
			must(t, unix.Lstat(src, &ss))
			must(t, unix.Lstat(dst, &ds))
			if ss.Mtim == ds.Mtim {
				t.Fatalf("test setup: after the kill DST's root already has SRC's mtime")
			}
			r := run(t, nil, "copy", src, dst)
			if r.code != 0 || !strings.Contains(r.stdout, "already complete") {
				t.Errorf("rerun: exit %d, want 0 and \"already complete\"\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			must(t, unix.Lstat(src, &ss))
			must(t, unix.Lstat(dst, &ds))
			if ss.Mtim != ds.Mtim {
				t.Errorf("DST's root mtime %v, want SRC's %v", ds.Mtim, ss.Mtim)
			}
			if r := run(t, nil, "verify", "--progress=none", src, dst); r.code != 0 {
				t.Errorf("verify: exit %d\n%s", r.code, r.stdout)
			}
		}},
		{"DST differs", func(t *testing.T, src, dst string) {
			mustCopy(t, src, dst)
			p := filepath.Join(dst, "a", "f2")
			must(t, os.WriteFile(p, []byte("changed in DST, longer"), 0o644))
			r := run(t, nil, "copy", "-q", src, dst)
			if r.code != 2 {
				t.Errorf("rerun on a DST that differs: exit %d, want 2\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			oneLineErr(t, r)
			if got := mtReadFile(t, p); got != "changed in DST, longer" {
				t.Errorf("the refused rerun changed DST's a/f2: %q", got)
			}
		}},
		{"DST has other top-level names", func(t *testing.T, src, dst string) {
			mustCopy(t, src, dst)
			mtWrite(t, dst, map[string]string{"unrelated/x": "not from SRC"})
			start := time.Now()
			r := run(t, nil, "copy", "--progress=plain", src, dst)
			if r.code != 2 {
				t.Errorf("rerun on a DST with other names: exit %d, want 2\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			oneLineErr(t, r)
			if !strings.Contains(r.stderr, "unrelated") {
				t.Errorf("the refusal does not name the extra entry:\n%s", r.stderr)
			}
			if strings.Contains(r.stderr, "checking whether") || strings.Contains(r.stderr, "] compare") {
				t.Errorf("the trees were compared in full; a different top level should be refused at once:\n%s", r.stderr)
			}
			t.Logf("refused in %v", time.Since(start))
			if got := mtReadFile(t, filepath.Join(dst, "unrelated", "x")); got != "not from SRC" {
				t.Errorf("the refused rerun changed DST")
			}
		}},
		{"until loop on a finished move", func(t *testing.T, src, dst string) {
			crashAt(t, "remove", "move", "-q", src, dst)
			if r := run(t, nil, "move", "-q", src, dst); r.code != 0 {
				t.Fatalf("move after the kill: exit %d\n%s", r.code, r.stderr)
			}
			script := `n=0; until "$HLCP" move --progress=none "$SRC" "$DST"; do n=$((n+1)); if [ $n -ge 3 ]; then echo "gave up"; exit 1; fi; done; echo "failures $n"`
			for i := 1; i <= 2; i++ {
				cmd := exec.Command("sh", "-c", script)
				cmd.Env = append(os.Environ(), "HLCP="+hlcpBin, "SRC="+src, "DST="+dst)
				out, err := cmd.CombinedOutput()
				if err != nil || !strings.Contains(string(out), "failures 0") || !strings.Contains(string(out), "nothing left to move") {
					t.Errorf("rerun %d of the finished move in an until loop: %v, want a first try that exits 0 with \"nothing left to move\"\n%s", i, err, out)
				}
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
			mtSmallTree(t, src)
			c.fn(t, src, dst)
		})
	}
}

// TestMessages (issue 15, item 11): a SRC recreated since the job started
// is named as such; entries added to SRC after the scan of a resumed copy
// are listed (exit 3); a full state filesystem during the sort stops with
// one instruction (exit 4).
func TestMessages(t *testing.T) {
	t.Run("SRC recreated", func(t *testing.T) {
		base := t.TempDir()
		src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
		mtSmallTree(t, src)
		crashAt(t, "copy", "copy", "-q", src, dst)
		var before unix.Stat_t
		must(t, unix.Stat(src, &before))
		// The same content in a new directory (inode) under SRC's name.
		twin := filepath.Join(base, "src.new")
		if out, err := exec.Command("cp", "-a", src, twin).CombinedOutput(); err != nil {
			t.Fatalf("cp -a: %v %s", err, out)
		}
		must(t, os.RemoveAll(src))
		must(t, os.Rename(twin, src))
		var after unix.Stat_t
		must(t, unix.Stat(src, &after))
		if after.Ino == before.Ino {
			t.Fatalf("test setup: the recreated SRC has the old inode")
		}
		r := run(t, nil, "copy", "-q", src, dst)
		if r.code != 2 {
			t.Errorf("exit %d, want 2\nstderr:\n%s", r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, "SRC") || !strings.Contains(r.stderr, "was recreated") {
			t.Errorf("the refusal should say that SRC was recreated:\n%s", r.stderr)
		}
	})

	t.Run("SRC gained a file after the scan", func(t *testing.T) {
		base := t.TempDir()
		src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
		mtSmallTree(t, src)
		mtWrite(t, src, map[string]string{"sub/old-file": "scanned"})
		crashAt(t, "copy", "copy", "-q", src, dst)
		mtWrite(t, src, map[string]string{"sub/new-file": "added after the scan"})
		r := run(t, nil, "copy", "--progress=plain", src, dst)
		if r.code != 3 {
			t.Errorf("exit %d, want 3\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "sub/new-file") {
			t.Errorf("stderr does not list sub/new-file:\n%s", r.stderr)
		}
		if !strings.Contains(r.stderr, "resuming the job") {
			t.Errorf("the rerun did not resume:\n%s", r.stderr)
		}
		if got := mtReadFile(t, filepath.Join(dst, "sub", "old-file")); got != "scanned" {
			t.Errorf("DST's sub/old-file: %q", got)
		}
	})

	t.Run("state full during the sort", func(t *testing.T) {
		stateFS := mtTmpfs(t, "size=1m,mode=0755")
		base := t.TempDir()
		src, dst, state := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(stateFS, "state")
		must(t, os.Mkdir(src, 0o755))
		files := map[string]string{}
		for i := 0; i < 1500; i++ {
			files[fmt.Sprintf("d%02d/a-file-with-a-rather-long-name-%05d", i%20, i)] = ""
		}
		mtWrite(t, src, files)
		// The scan goes through; then the state's filesystem is filled
		// up to a few KiB, so that the sort runs out of space.
		crashAt(t, "sort", "copy", "-q", "--state", state, src, dst)
		filler, err := os.Create(filepath.Join(stateFS, "filler"))
		must(t, err)
		chunk := make([]byte, 4096)
		for {
			if _, err := filler.Write(chunk); err != nil {
				break
			}
		}
		fi, err := filler.Stat()
		must(t, err)
		must(t, filler.Truncate(max(fi.Size()-8192, 0)))
		filler.Close()

		r := run(t, nil, "copy", "--progress=plain", "--state", state, src, dst)
		if r.code != 4 {
			t.Fatalf("exit %d, want 4\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "stopped in phase sort") || !strings.Contains(r.stderr, "no space left on device") {
			t.Errorf("want a stop in phase sort on a full filesystem:\n%s", r.stderr)
		}
		n := 0
		for _, instr := range []string{"rerun with --restart", "pass --restart", "rerun the same command"} {
			if strings.Contains(r.stderr, instr) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("the message gives %d instructions, want one:\n%s", n, r.stderr)
		}
		if strings.Contains(r.stderr, "rerun with --restart") && strings.Contains(r.stderr, "rerun the same command") {
			t.Errorf("the message says both to rerun with --restart and to rerun the same command:\n%s", r.stderr)
		}
		// Space freed: the same command resumes and finishes.
		must(t, os.Remove(filepath.Join(stateFS, "filler")))
		r = run(t, nil, "copy", "-q", "--state", state, src, dst)
		if r.code != 0 {
			t.Errorf("rerun after freeing space: exit %d\n%s", r.code, r.stderr)
		}
	})
}

// TestResumeAfterMountRenumbered (issue 15, item 12): like
// TestResumeAfterDeviceRenumbered, but the filesystem that comes back with
// another device number is mounted below SRC (SRC/m), not SRC's own. The
// rerun maps the scan's device number of m to today's and resumes; the
// copy is exact. The old code mapped SRC's own device only: every file
// under m failed as "replaced since the scan".
func TestResumeAfterMountRenumbered(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root to loop-mount an ext4 image")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	base := t.TempDir()
	img := filepath.Join(base, "m.img")
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	mnt := filepath.Join(src, "m")
	must(t, os.MkdirAll(mnt, 0o755))
	f, err := os.Create(img)
	must(t, err)
	must(t, f.Truncate(64<<20))
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-F", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	var dev string // the loop device the image is on, "" when detached
	attach := func() {
		out, err := exec.Command("losetup", "-f", "--show", img).Output()
		if err != nil {
			t.Skipf("no free loop device: %v", err)
		}
		d := strings.TrimSpace(string(out))
		if out, err := exec.Command("mount", d, mnt).CombinedOutput(); err != nil {
			exec.Command("losetup", "-d", d).Run()
			t.Skipf("mount %s: %v %s", d, err, out)
		}
		dev = d
	}
	detach := func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s; lazy unmount", mnt, err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
		exec.Command("losetup", "-d", dev).Run()
		dev = ""
	}
	t.Cleanup(func() {
		if dev != "" {
			detach()
		}
	})

	attach()
	os.Remove(filepath.Join(mnt, "lost+found"))
	testutil.BuildSnapshots(t, mnt, testutil.SnapshotSpec{Snapshots: 3, Files: 200, Seed: 12})
	mtWrite(t, src, map[string]string{"top": "on SRC's own filesystem", "plain/f": "also not under m"})
	before, err := testutil.Snapshot(src, compareOpts())
	must(t, err)
	crashAt(t, "copy", "copy", "-q", src, dst)
	var st1 unix.Stat_t
	must(t, unix.Stat(mnt, &st1))
	dev1 := dev
	detach()
	// Another loop device held meanwhile, so that the image cannot come
	// back on the one it had.
	hold := filepath.Join(base, "hold.img")
	must(t, os.WriteFile(hold, make([]byte, 1<<20), 0o600))
	if out, err := exec.Command("losetup", "-f", "--show", hold).Output(); err == nil {
		held := strings.TrimSpace(string(out))
		t.Cleanup(func() { exec.Command("losetup", "-d", held).Run() })
	}
	attach()
	var st2 unix.Stat_t
	must(t, unix.Stat(mnt, &st2))
	if st1.Dev == st2.Dev {
		t.Skipf("the image came back with the same st_dev (%s, then %s)", dev1, dev)
	}
	var sst unix.Stat_t
	must(t, unix.Stat(src, &sst))
	if sst.Dev == st2.Dev {
		t.Fatalf("test setup: m is not a mount point")
	}
	r := mustCopy(t, src, dst)
	if !strings.Contains(r.stderr, "resuming the job") {
		t.Errorf("the rerun did not resume:\n%s", r.stderr)
	}
	checkExact(t, before, dst, compareOpts())
}
