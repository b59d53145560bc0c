package main

// End-to-end tests: build real trees, run the hlcp binary on them, and check
// the result with internal/testutil's oracle, which shares no code with the
// copier, and with rsync.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/testutil"
)

var hlcpBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hlcp-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Chmod(dir, 0o755) // tests run it as an unprivileged user too
	hlcpBin = filepath.Join(dir, "hlcp")
	out, err := exec.Command("go", "build", "-o", hlcpBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build hlcp: %v\n%s", err, out)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
	maxRSS         int64 // bytes, of the child
}

func run(t testing.TB, cred *syscall.Credential, args ...string) result {
	t.Helper()
	cmd := exec.Command(hlcpBin, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run hlcp %v: %v", args, err)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSS = ru.Maxrss << 10
	}
	return r
}

func mustCopy(t testing.TB, src, dst string, extra ...string) result {
	t.Helper()
	args := append([]string{"copy", "--progress=plain"}, extra...)
	r := run(t, nil, append(args, src, dst)...)
	if r.code != 0 {
		t.Fatalf("hlcp copy exited %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	return r
}

func isRoot() bool { return os.Geteuid() == 0 }

// checkExact compares a snapshot of the source taken before the copy with
// the destination (so that atimes the copy could not help changing, such
// as directory atimes on relatime mounts, are not blamed on the copy).
func checkExact(t *testing.T, before *testutil.Tree, dst string, opts testutil.CompareOptions) {
	t.Helper()
	after, err := testutil.Snapshot(dst, opts)
	if err != nil {
		t.Fatalf("snapshot %s: %v", dst, err)
	}
	if d := testutil.Diff(before, after, opts); len(d) > 0 {
		if len(d) > 40 {
			d = append(d[:40], fmt.Sprintf("... and %d more", len(d)-40))
		}
		t.Errorf("copy differs from source:\n  %s", strings.Join(d, "\n  "))
	}
}

func compareOpts() testutil.CompareOptions {
	o := testutil.FullCompare()
	o.Owner = isRoot()
	return o
}

// rsyncCheck cross-checks with rsync -naHAXc, which cannot handle paths
// longer than PATH_MAX: the deep part of the kitchen sink is removed from
// both sides first (the oracle checked it).
func rsyncCheck(t *testing.T, src, dst string) {
	t.Helper()
	for _, root := range []string{src, dst} {
		deep := filepath.Join(root, "deep")
		if _, err := os.Lstat(deep); err == nil {
			if out, err := exec.Command("rm", "-rf", deep).CombinedOutput(); err != nil {
				t.Fatalf("rm deep: %v %s", err, out)
			}
			// Removing it changed the parent's mtime on one side only
			// at a different instant: put both back the same.
			unix.UtimesNanoAt(unix.AT_FDCWD, root, []unix.Timespec{{Sec: 1600000000}, {Sec: 1600000000}}, 0)
		}
	}
	if lines := testutil.RsyncItemize(t, src, dst); len(lines) > 0 {
		t.Errorf("rsync -naHAXc reports differences:\n  %s", strings.Join(lines, "\n  "))
	}
}

func TestCopyKitchenSink(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	os.Mkdir(src, 0o755)
	made := testutil.BuildKitchenSink(t, src)
	for _, m := range made {
		if strings.HasPrefix(m, "SKIPPED") {
			t.Log(m)
		}
	}
	before, err := testutil.Snapshot(src, compareOpts())
	if err != nil {
		t.Fatal(err)
	}
	r := mustCopy(t, src, dst)
	if !strings.Contains(r.stdout, "errors        0") {
		t.Errorf("summary does not report zero errors:\n%s", r.stdout)
	}
	checkExact(t, before, dst, compareOpts())
	if _, err := os.Lstat(filepath.Join(dst, ".hlcp-state")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory left behind after a completed copy: %v", err)
	}
	rsyncCheck(t, src, dst)
}

func TestCopySnapshotsJobs(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.Mkdir(src, 0o755)
	paths, inodes := testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 8, Files: 3000, DirsPerLevel: 4, Depth: 3, ChangeRate: 0.1, Seed: 7, MaxSize: 16 << 10})
	t.Logf("tree: %d paths, %d inodes", paths, inodes)
	before, err := testutil.Snapshot(src, compareOpts())
	if err != nil {
		t.Fatal(err)
	}
	for _, jobs := range []string{"1", "3", "16"} {
		t.Run("jobs="+jobs, func(t *testing.T) {
			dst := filepath.Join(base, "dst"+jobs)
			mustCopy(t, src, dst, "-j", jobs, "--memory", "32M")
			checkExact(t, before, dst, compareOpts())
		})
	}
}

// TestLargeGroups makes inodes with more links than one copy task holds,
// so that their links are streamed in parallel chunks.
func TestLargeGroups(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	for _, d := range []string{"a", "b", "c"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "a", "big"), bytes.Repeat([]byte("x"), 100000), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target", filepath.Join(src, "a", "sym")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12000; i++ {
		d := []string{"a", "b", "c"}[i%3]
		if err := os.Link(filepath.Join(src, "a", "big"), filepath.Join(src, d, fmt.Sprintf("big-%05d", i))); err != nil {
			t.Fatal(err)
		}
		if i < 5000 {
			if err := os.Link(filepath.Join(src, "a", "sym"), filepath.Join(src, d, fmt.Sprintf("sym-%05d", i))); err != nil {
				t.Fatal(err)
			}
		}
		if i%1000 == 0 {
			os.WriteFile(filepath.Join(src, d, fmt.Sprintf("small-%05d", i)), []byte("s"), 0o644)
		}
	}
	// Reading a new symlink updates its atime (relatime: atime <= mtime);
	// atime after mtime and in the future: relatime leaves it alone,
	// so the oracle's own readlink does not change it.
	future := unix.Timespec{Sec: 4102444800, Nsec: 5}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, "a", "sym"), []unix.Timespec{future, {Sec: 1600000000}}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	before, err := testutil.Snapshot(src, compareOpts())
	if err != nil {
		t.Fatal(err)
	}
	r := mustCopy(t, src, dst, "-j", "4")
	checkExact(t, before, dst, compareOpts())
	if !strings.Contains(r.stdout, "largest 12,001 paths") {
		t.Errorf("summary should report the largest group of 12,001 paths:\n%s", r.stdout)
	}
}

// TestCopyAcrossFilesystems copies between loop-mounted filesystems (root
// only), so that reflink is impossible and copy_file_range crosses devices.
func TestCopyAcrossFilesystems(t *testing.T) {
	cases := []struct{ from, to string }{
		{"ext4", "xfs"},
		{"xfs", "ext4"},
		{"tmp", "btrfs"},
		{"btrfs", "btrfs-same"},
	}
	for _, c := range cases {
		t.Run(c.from+"-to-"+c.to, func(t *testing.T) {
			mount := func(fs string) string {
				switch fs {
				case "tmp":
					return t.TempDir()
				case "ext4":
					return testutil.MountImage(t, "ext4", 300, "-b", "4096")
				default:
					return testutil.MountImage(t, fs, 400)
				}
			}
			srcFS := mount(c.from)
			var dstFS string
			if c.to == "btrfs-same" {
				dstFS = srcFS // same filesystem: reflinks
			} else {
				dstFS = mount(c.to)
			}
			t.Logf("source on %s, destination on %s", fsName(t, srcFS), fsName(t, dstFS))
			if want := strings.TrimSuffix(c.to, "-same"); fsName(t, dstFS) != want {
				t.Fatalf("destination is %s, want %s", fsName(t, dstFS), want)
			}
			src, dst := filepath.Join(srcFS, "src"), filepath.Join(dstFS, "dst")
			os.Mkdir(src, 0o755)
			for _, m := range testutil.BuildKitchenSink(t, src) {
				if strings.HasPrefix(m, "SKIPPED") {
					t.Log(m)
				}
			}
			before, err := testutil.Snapshot(src, compareOpts())
			if err != nil {
				t.Fatal(err)
			}
			r := mustCopy(t, src, dst)
			checkExact(t, before, dst, compareOpts())
			if c.to == "btrfs-same" && strings.Contains(r.stdout, " 0 files reflinked") {
				t.Errorf("a copy within one btrfs should reflink:\n%s", r.stdout)
			}
		})
	}
}

// fsName names the filesystem type of dir.
func fsName(t testing.TB, dir string) string {
	var s unix.Statfs_t
	if err := unix.Statfs(dir, &s); err != nil {
		t.Fatal(err)
	}
	switch s.Type {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.MSDOS_SUPER_MAGIC:
		return "vfat"
	}
	return fmt.Sprintf("fs 0x%x", s.Type)
}

func TestBadArguments(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	os.Symlink("src", filepath.Join(base, "srclink"))
	full := filepath.Join(base, "full")
	os.MkdirAll(full, 0o755)
	os.WriteFile(filepath.Join(full, "keep"), []byte("mine"), 0o644)
	os.Symlink(full, filepath.Join(base, "dstlink"))
	cases := []struct {
		name     string
		args     []string
		want     string
		mustMiss string // a path that must not have been created
	}{
		{"src missing", []string{filepath.Join(base, "nope"), filepath.Join(base, "d1")}, "does not exist", filepath.Join(base, "d1")},
		{"src is a file", []string{filepath.Join(src, "f"), filepath.Join(base, "d2")}, "not a directory", filepath.Join(base, "d2")},
		{"src is a symlink", []string{filepath.Join(base, "srclink"), filepath.Join(base, "d3")}, "symlink", filepath.Join(base, "d3")},
		{"dst not empty", []string{src, full}, "not empty", filepath.Join(full, "f")},
		{"dst is a file", []string{src, filepath.Join(src, "f")}, "inside SRC", ""},
		{"dst inside src", []string{src, filepath.Join(src, "sub", "copy")}, "inside SRC", filepath.Join(src, "sub", "copy")},
		{"dst is src", []string{src, src}, "inside SRC", ""},
		{"dst parent missing", []string{src, filepath.Join(base, "no", "such")}, "parent directory", filepath.Join(base, "no")},
		{"dst is a symlink", []string{src, filepath.Join(base, "dstlink")}, "symlink", filepath.Join(full, "f")},
		{"too few args", []string{src}, "accepts 2 arg", ""},
		{"bad memory", []string{"--memory", "lots", src, filepath.Join(base, "d4")}, "invalid size", filepath.Join(base, "d4")},
		{"state inside dst", []string{"--state", filepath.Join(base, "d5", "work"), src, filepath.Join(base, "d5")}, "inside DST", filepath.Join(base, "d5")},
		{"state inside existing dst", []string{"--state", filepath.Join(base, "d6", "sub"), src, filepath.Join(base, "d6")}, "inside DST", filepath.Join(base, "d6", "sub")},
	}
	os.Mkdir(filepath.Join(base, "d6"), 0o755)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := run(t, nil, append([]string{"copy"}, c.args...)...)
			if r.code != 2 {
				t.Errorf("exit code %d, want 2\nstderr: %s", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, c.want) {
				t.Errorf("stderr %q does not say %q", r.stderr, c.want)
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 0 && c.name != "too few args" {
				t.Errorf("error should be one line, got:\n%s", r.stderr)
			}
			if c.mustMiss != "" {
				if _, err := os.Lstat(c.mustMiss); err == nil {
					t.Errorf("%s was created by a refused command", c.mustMiss)
				}
			}
		})
	}
	if b, _ := os.ReadFile(filepath.Join(full, "keep")); string(b) != "mine" {
		t.Errorf("a refused copy changed a file in DST")
	}
}

// nobodyDirs makes a base directory that user nobody can reach and own,
// with the paths of SRC and DST in it (neither exists yet); it skips the
// test when not root.
func nobodyDirs(t *testing.T) (base, src, dst string) {
	t.Helper()
	if !isRoot() {
		t.Skip("needs root to run hlcp as another user")
	}
	base = t.TempDir()
	for p := base; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	return base, filepath.Join(base, "src"), filepath.Join(base, "dst")
}

// TestUnreadableReported runs hlcp as an unprivileged user on a tree with an
// unreadable file and directory: both are reported with their paths, the
// rest is copied, and the exit code says "partial".
func TestUnreadableReported(t *testing.T) {
	base, src, dst := nobodyDirs(t)
	os.MkdirAll(filepath.Join(src, "ok", "deeper"), 0o755)
	os.MkdirAll(filepath.Join(src, "closed"), 0o755)
	os.WriteFile(filepath.Join(src, "ok", "a"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(src, "ok", "deeper", "b"), []byte("b"), 0o644)
	os.WriteFile(filepath.Join(src, "closed", "c"), []byte("c"), 0o644)
	os.WriteFile(filepath.Join(src, "secret"), []byte("s"), 0o644)
	os.Link(filepath.Join(src, "ok", "a"), filepath.Join(src, "a-link"))
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		return os.Lchown(p, 65534, 65534)
	})
	os.Chmod(filepath.Join(src, "secret"), 0)
	os.Chmod(filepath.Join(src, "closed"), 0)
	os.Chown(base, 65534, 65534)
	t.Cleanup(func() { os.Chmod(filepath.Join(src, "closed"), 0o755) })

	r := run(t, &syscall.Credential{Uid: 65534, Gid: 65534}, "copy", "--progress=plain", src, dst)
	if r.code != 3 {
		t.Fatalf("exit code %d, want 3 (partial)\nstdout:%s\nstderr:%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"secret: open: permission denied", "closed: open directory: permission denied", "errors (2):"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	for _, p := range []string{"ok/a", "ok/deeper/b", "a-link"} {
		if _, err := os.Lstat(filepath.Join(dst, p)); err != nil {
			t.Errorf("%s not copied: %v", p, err)
		}
	}
	var a, l syscall.Stat_t
	syscall.Lstat(filepath.Join(dst, "ok/a"), &a)
	syscall.Lstat(filepath.Join(dst, "a-link"), &l)
	if a.Ino != l.Ino {
		t.Errorf("hard link ok/a = a-link not preserved")
	}
	if fi, err := os.Lstat(filepath.Join(dst, "closed")); err != nil || fi.Mode().Perm() != 0 {
		t.Errorf("unreadable directory should still be created with its mode 0000: %v %v", fi, err)
	}
}

// TestErrorsSurviveCrash: errors reported before a crash (here the scan's
// unreadable directory, then a kill right after the scan's checkpoint) are
// still listed, and still make the exit code "partial", when the rerun
// finishes the job.
func TestErrorsSurviveCrash(t *testing.T) {
	base, src, dst := nobodyDirs(t)
	os.MkdirAll(filepath.Join(src, "closed"), 0o755)
	os.WriteFile(filepath.Join(src, "ok"), []byte("a"), 0o644)
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error { return os.Lchown(p, 65534, 65534) })
	os.Chmod(filepath.Join(src, "closed"), 0)
	os.Chown(base, 65534, 65534)
	t.Cleanup(func() { os.Chmod(filepath.Join(src, "closed"), 0o755) })
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}

	cmd := exec.Command(hlcpBin, "copy", "-q", src, dst)
	cmd.Env = append(os.Environ(), "HLCP_TEST_CRASH_AT=sort")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	out, err := cmd.CombinedOutput()
	if !killed(err) {
		t.Fatalf("the crash hook did not fire: %v\n%s", err, out)
	}
	r := run(t, nobody, "copy", "--progress=plain", src, dst)
	if r.code != 3 || !strings.Contains(r.stderr, "closed: open directory: permission denied") {
		t.Errorf("rerun after the crash: exit %d, want 3 with the scan's error listed\nstderr:\n%s", r.code, r.stderr)
	}
	if _, err := os.Lstat(filepath.Join(dst, "ok")); err != nil {
		t.Errorf("ok not copied: %v", err)
	}
}

// TestRestartDamagedState: a job state that cannot be read refuses a plain
// rerun (nothing is guessed) and is discarded by --restart.
func TestRestartDamagedState(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	os.Mkdir(src, 0o755)
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 2, Files: 30, DirsPerLevel: 2, Depth: 1, ChangeRate: 0.2, Seed: 5, MaxSize: 2000})
	cmd := exec.Command(hlcpBin, "copy", "-q", src, dst)
	cmd.Env = append(os.Environ(), "HLCP_TEST_CRASH_AT=copy")
	if err := cmd.Run(); err == nil {
		t.Fatal("the crash hook did not fire")
	}
	must(t, os.WriteFile(filepath.Join(dst, ".hlcp-state", "state.json"), []byte("{garbage"), 0o600))
	if r := run(t, nil, "copy", "-q", src, dst); r.code != 2 || !strings.Contains(r.stderr, "--restart") {
		t.Errorf("rerun on a damaged state: exit %d, stderr %q; want 2 and a hint to --restart", r.code, r.stderr)
	}
	mustCopy(t, src, dst, "--restart")
	if r := run(t, nil, "verify", "--progress=none", src, dst); r.code != 0 {
		t.Errorf("verify after --restart: exit %d\n%s", r.code, r.stdout)
	}
}

// TestCrashAtTheEnd: a job killed when everything but the root's own
// metadata and the state's removal is done is finished by the rerun; a
// read-only root (mode 0555, as user nobody) gets its mode and mtime.
func TestCrashAtTheEnd(t *testing.T) {
	base, src, dst := nobodyDirs(t)
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "f"), []byte("x"), 0o644)
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error { return os.Lchown(p, 65534, 65534) })
	os.Chown(base, 65534, 65534)
	must(t, os.Chmod(src, 0o555))
	mt := unix.Timespec{Sec: 1000000000, Nsec: 123}
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, src, []unix.Timespec{mt, mt}, 0))
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	cmd := exec.Command(hlcpBin, "copy", "-q", src, dst)
	cmd.Env = append(os.Environ(), "HLCP_TEST_CRASH_AT=done")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	if err := cmd.Run(); err == nil {
		t.Fatal("the crash hook did not fire")
	}
	if r := run(t, nobody, "copy", "-q", src, dst); r.code != 0 {
		t.Fatalf("rerun: exit %d\n%s", r.code, r.stderr)
	}
	var st unix.Stat_t
	must(t, unix.Lstat(dst, &st))
	if st.Mode&07777 != 0o555 || st.Mtim != mt {
		t.Errorf("DST root: mode %o mtime %v, want 555 and %v", st.Mode&07777, st.Mtim, mt)
	}
	if _, err := os.Lstat(filepath.Join(dst, ".hlcp-state")); err == nil {
		t.Errorf("the state was not removed")
	}
	if r := run(t, nil, "verify", "--progress=none", "--no-owner", src, dst); r.code != 0 {
		t.Errorf("verify: exit %d\n%s", r.code, r.stdout)
	}
}

func TestProgressJSON(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.Mkdir(src, 0o755)
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 3, Files: 500, DirsPerLevel: 3, Depth: 2, ChangeRate: 0.1, Seed: 3})
	r := run(t, nil, "copy", "--progress=json", "--interval=10ms", src, filepath.Join(base, "dst"))
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	phases := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("progress line is not JSON: %q: %v", line, err)
		}
		if p, ok := m["phase"].(string); ok && m["final"] == true {
			phases[p] = true
		}
	}
	for _, p := range []string{"scan", "sort", "mkdir", "copy", "finish"} {
		if !phases[p] {
			t.Errorf("no final progress object for phase %s in:\n%s", p, r.stderr)
		}
	}
	var sum map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil {
		t.Fatalf("summary is not JSON: %q: %v", r.stdout, err)
	}
	if sum["exit_code"].(float64) != 0 || sum["paths_created"].(float64) == 0 {
		t.Errorf("summary: %v", sum)
	}
}

// scratchTmpfs returns a directory for a big tree: a private tmpfs without
// an inode limit when root (tmpfs counts every hard link against its
// nr_inodes), else a temporary directory on disk.
func scratchTmpfs(t *testing.T) string {
	dir := t.TempDir()
	if !isRoot() {
		return dir
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16g,nr_inodes=0,mode=0755"); err != nil {
		t.Logf("mount tmpfs: %v; using the disk", err)
		return dir
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// TestMemoryBound copies a tree of about a million paths (20 snapshots) and
// checks the child's peak RSS against the default budget.
func TestMemoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 1M-path memory test")
	}
	dir := scratchTmpfs(t)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.Mkdir(src, 0o755)
	paths, inodes := testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 20, Files: 50000, DirsPerLevel: 8, Depth: 3, ChangeRate: 0.05, Seed: 11, MaxSize: 2048})
	// One inode with 200,000 links: a group far larger than a copy task,
	// which must stream.
	hub := filepath.Join(src, "hub")
	os.Mkdir(hub, 0o755)
	os.WriteFile(filepath.Join(hub, "one"), []byte("shared by 200k paths"), 0o644)
	for i := 0; i < 200000; i++ {
		if err := os.Link(filepath.Join(hub, "one"), filepath.Join(hub, fmt.Sprintf("l%06d", i))); err != nil {
			t.Fatal(err)
		}
	}
	paths += 200001
	t.Logf("tree: %d paths, %d inodes", paths, inodes)
	if paths < 1000000 {
		t.Fatalf("tree has only %d paths", paths)
	}
	r := mustCopy(t, src, dst, "--memory", "128M")
	t.Logf("peak RSS %.1f MiB for %d paths\n%s", float64(r.maxRSS)/(1<<20), paths, r.stdout)
	if r.maxRSS > 128<<20 {
		t.Errorf("peak RSS %d MiB exceeds the 128 MiB budget", r.maxRSS>>20)
	}
	if r.maxRSS == 0 {
		t.Errorf("could not measure the child's peak RSS")
	}
	// hlcp verify, content included, in the same budget.
	v := run(t, nil, "verify", "--checksum", "--memory", "128M", "--progress=plain", src, dst)
	t.Logf("verify: peak RSS %.1f MiB\n%s", float64(v.maxRSS)/(1<<20), v.stdout)
	if v.code != 0 {
		t.Errorf("verify exit %d:\n%s\n%s", v.code, v.stdout, v.stderr)
	}
	if v.maxRSS > 128<<20 {
		t.Errorf("verify peak RSS %d MiB exceeds the 128 MiB budget", v.maxRSS>>20)
	}
	// Cross-check the link structure with the oracle (metadata only: the
	// content check of 1M paths is done by verify above).
	o := testutil.CompareOptions{Owner: isRoot()}
	a, err := testutil.Snapshot(src, o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := testutil.Snapshot(dst, o)
	if err != nil {
		t.Fatal(err)
	}
	if d := testutil.Diff(a, b, o); len(d) > 0 {
		t.Errorf("%d differences, first: %v", len(d), d[:min(len(d), 10)])
	}
}
