package main

// Tests of `hlcp sync` against what a hostile review of it found: each
// reproduces one finding, and fails if its defect is back.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSyncUnreadableSrcDir: a directory SRC cannot list must not cost DST
// its copy of it. Everything below it shows as "only in DST", but SRC may
// still have it: like rsync after an I/O error, the sync deletes nothing
// only DST has, says so and exits 3; the rest of the work is done.
func TestSyncUnreadableSrcDir(t *testing.T) {
	base, src, dst := nobodyDirs(t)
	for _, d := range []string{"sub/deeper", "other"} {
		must(t, os.MkdirAll(filepath.Join(src, d), 0o755))
	}
	putFile(t, filepath.Join(src, "sub", "a"), []byte("a"), 0o644, 1_600_000_000)
	putFile(t, filepath.Join(src, "sub", "deeper", "b"), []byte("b"), 0o644, 1_600_000_001)
	putFile(t, filepath.Join(src, "other", "c"), []byte("c"), 0o644, 1_600_000_002)
	must(t, filepath.Walk(base, func(p string, fi os.FileInfo, err error) error { return os.Lchown(p, 65534, 65534) }))
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	if r := run(t, nobody, "copy", "-q", src, dst); r.code != 0 {
		t.Fatalf("copy as nobody: exit %d\n%s", r.code, r.stderr)
	}
	putFile(t, filepath.Join(src, "other", "new"), []byte("new"), 0o644, 1_600_000_003)
	must(t, os.Lchown(filepath.Join(src, "other", "new"), 65534, 65534))
	must(t, os.Chmod(filepath.Join(src, "sub"), 0))
	t.Cleanup(func() { os.Chmod(filepath.Join(src, "sub"), 0o755) })

	r, s := runSync(t, nobody, src, dst)
	if r.code != 3 {
		t.Errorf("sync of a SRC with an unreadable directory: exit %d, want 3\n%s", r.code, r.stderr)
	}
	for _, p := range []string{"sub/a", "sub/deeper/b"} {
		// DST's sub may now be mode 0 (SRC's): look as root.
		if _, err := os.Lstat(filepath.Join(dst, p)); err != nil {
			t.Errorf("bug: DST's %s is gone after a sync whose SRC could not list sub/ (the paths below it were taken for extras): %v", p, err)
		}
	}
	if s.Stats.Deleted != 0 {
		t.Errorf("%d paths deleted, want 0", s.Stats.Deleted)
	}
	if !strings.Contains(r.stderr, "none of the") {
		t.Errorf("the sync does not say that it deleted nothing:\n%s", r.stderr)
	}
	if got, err := os.ReadFile(filepath.Join(dst, "other", "new")); err != nil || string(got) != "new" {
		t.Errorf("the rest of the sync was not done: other/new = %q, %v", got, err)
	}
	// Readable again, the next sync is exact.
	must(t, os.Chmod(filepath.Join(src, "sub"), 0o755))
	before := snap(t, src, syncOpts())
	mustSync(t, src, dst)
	checkExact(t, before, dst, syncOpts())
}

// TestSyncExtraMountPoint: a directory only DST has, with another
// filesystem mounted below it, is deleted up to the mount point and no
// further: nothing of the other filesystem is touched, and the sync says
// what it kept (exit 3), with or without -x.
func TestSyncExtraMountPoint(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root to bind-mount")
	}
	for _, x := range []bool{false, true} {
		name := "default"
		if x {
			name = "-x"
		}
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			src, dst, outside := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "outside")
			must(t, os.MkdirAll(filepath.Join(src, "keep"), 0o755))
			must(t, os.MkdirAll(filepath.Join(src, "old"), 0o755))
			putFile(t, filepath.Join(src, "keep", "f"), []byte("f"), 0o644, 1_600_000_000)
			putFile(t, filepath.Join(src, "old", "g"), []byte("g"), 0o644, 1_600_000_001)
			mustCopy(t, src, dst)
			must(t, os.MkdirAll(filepath.Join(dst, "old", "mnt"), 0o755))
			must(t, os.MkdirAll(outside, 0o755))
			putFile(t, filepath.Join(outside, "precious"), []byte("not DST's"), 0o644, 1_600_000_002)
			mnt := filepath.Join(dst, "old", "mnt")
			must(t, unix.Mount(outside, mnt, "", unix.MS_BIND, ""))
			t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
			must(t, os.RemoveAll(filepath.Join(src, "old")))

			args := []string{"--max-delete", "100%"}
			if x {
				args = append(args, "-x")
			}
			r, _ := runSync(t, nil, src, dst, args...)
			if _, err := os.Stat(filepath.Join(outside, "precious")); err != nil {
				t.Fatalf("bug: a file of the filesystem mounted in an extra directory of DST was deleted (removeTree crossed the mount point): %v", err)
			}
			if r.code != 3 || !strings.Contains(r.stderr, "mount point") {
				t.Errorf("exit %d, want 3 with the mount point reported\n%s", r.code, r.stderr)
			}
			if _, err := os.Stat(filepath.Join(dst, "old", "g")); err == nil {
				t.Errorf("old/g, on DST's own filesystem, was not deleted")
			}
		})
	}
}

// TestSyncDeepLinkCache: a new link at a path deeper than the directory
// cache holds (always beyond PATH_MAX). Reaching its directory opens more
// directories than the cache keeps, and must not close the fd of the
// directory that holds the inode to link to: that fd's number, reused,
// once linked a file of the same name from another directory.
func TestSyncDeepLinkCache(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must(t, os.MkdirAll(filepath.Join(src, "k"), 0o755))
	putFile(t, filepath.Join(src, "k", "f"), []byte("right content\n"), 0o644, 1_600_000_000)
	const depth = 2200 // the cache holds 2,048 at --memory 32M
	walk := func(root string, each func(fd, level int)) {
		fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		must(t, err)
		for i := 1; i <= depth; i++ {
			if err := unix.Mkdirat(fd, "D", 0o755); err != nil && err != unix.EEXIST {
				t.Fatal(err)
			}
			nfd, err := unix.Openat(fd, "D", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
			must(t, err)
			unix.Close(fd)
			fd = nfd
			each(fd, i)
		}
		unix.Close(fd)
	}
	walk(src, func(fd, i int) {
		if i >= 2000 && i < depth {
			// decoys: a file named f in each directory the cache holds
			f, err := unix.Openat(fd, "f", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
			must(t, err)
			unix.Write(f, []byte("WRONG content\n"))
			unix.Close(f)
		}
	})
	mustCopy(t, src, dst)
	walk(src, func(fd, i int) {
		if i == depth {
			kfd, err := unix.Open(filepath.Join(src, "k"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
			must(t, err)
			must(t, unix.Linkat(kfd, "f", fd, "f.new", 0))
			unix.Close(kfd)
		}
	})
	before := snap(t, src, syncOpts())
	mustSync(t, src, dst, "--memory", "32M")
	var kst unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dst, "k", "f"), &kst))
	walk(dst, func(fd, i int) {
		if i != depth {
			return
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, "f.new", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatalf("the deep link is missing: %v", err)
		}
		if st.Ino != kst.Ino {
			t.Errorf("bug: the deep f.new is inode %d, not k/f's %d (a cached directory fd was closed and its number reused while in use)", st.Ino, kst.Ino)
		}
	})
	checkExact(t, before, dst, syncOpts())
}

// TestSyncTmpNamesOfSrc: SRC's own names that look like sync's temporary
// names are paths like any other: a sync neither takes them for its own
// nor deletes them.
func TestSyncTmpNamesOfSrc(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must(t, os.MkdirAll(filepath.Join(src, "a"), 0o755))
	for i, n := range []string{".hlcp-sync-1-1", ".hlcp-sync-1-2", ".hlcp-sync-0000000000000000-1"} {
		putFile(t, filepath.Join(src, "a", n), []byte(n), 0o644, 1_600_000_000+int64(i))
	}
	mustCopy(t, src, dst)
	putFile(t, filepath.Join(src, "a", "new"), []byte("new"), 0o644, 1_600_000_010)
	putFile(t, filepath.Join(src, "a", "edited"), []byte("edited"), 0o644, 1_600_000_011)
	before := snap(t, src, syncOpts())
	mustSync(t, src, dst)
	checkExact(t, before, dst, syncOpts())
}

// TestSyncKeptInodeSwapped: the owner of the directory that holds the
// inode a new link is made to swaps that file for another of theirs
// while the sync runs (here, during a delayed linkat). The new path must
// not become a link to the swapped-in inode (a file of theirs in another
// user's directory): the link is checked and undone, and the path
// reported.
func TestSyncKeptInodeSwapped(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	for _, d := range []string{"home/alice", "home/bob"} {
		must(t, os.MkdirAll(filepath.Join(src, d), 0o755))
	}
	putFile(t, filepath.Join(src, "home", "alice", "rc"), []byte("shared\n"), 0o644, 1_600_000_000)
	mustCopy(t, src, dst)
	must(t, os.Link(filepath.Join(src, "home", "alice", "rc"), filepath.Join(src, "home", "bob", "rc")))

	cmd, out := startTraced(t, strace, "linkat:delay_enter=1500000", "sync", "-q", src, dst)
	if !waitInSyscall(cmd.Process.Pid, unix.SYS_LINKAT, 60*time.Second) {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the sync never made a link\n%s", out)
	}
	rc := filepath.Join(dst, "home", "alice", "rc")
	must(t, os.Rename(rc, rc+".old"))
	putFile(t, rc, []byte("alice's own\n"), 0o600, 1_600_000_000)
	var swapped unix.Stat_t
	must(t, unix.Lstat(rc, &swapped))
	cmd.Wait()
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dst, "home", "bob", "rc"), &st); err == nil && st.Ino == swapped.Ino {
		t.Fatalf("bug: bob/rc is now the inode swapped in at alice/rc (linkInto linked whatever was at the kept path)\n%s", out)
	}
	if !strings.Contains(out.String(), "replaced") {
		t.Logf("the swap came too late or too early to be seen (output: %s)", out)
	}
	// Left alone, the next sync is exact.
	must(t, os.Remove(rc+".old"))
	before := snap(t, src, syncOpts())
	mustSync(t, src, dst)
	checkExact(t, before, dst, syncOpts())
}

// waitInSyscall waits until a process that tracer (strace) started is in
// system call nr, as /proc/PID/task/TID/syscall shows it.
func waitInSyscall(tracer int, nr int, limit time.Duration) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		kids, _ := os.ReadFile("/proc/" + strconv.Itoa(tracer) + "/task/" + strconv.Itoa(tracer) + "/children")
		for _, kid := range strings.Fields(string(kids)) {
			tasks, _ := os.ReadDir("/proc/" + kid + "/task")
			for _, task := range tasks {
				b, _ := os.ReadFile("/proc/" + kid + "/task/" + task.Name() + "/syscall")
				if f := strings.Fields(string(b)); len(f) > 0 && f[0] == strconv.Itoa(nr) {
					return true
				}
			}
		}
	}
	return false
}
