package main

// The hostile cases of copy and move: too many links for the destination,
// a destination without hard links, a destination that fills up, files
// that change or vanish, a symlink planted in DST, sources that change
// before a move removes them.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/testutil"
)

// crashAt runs hlcp with HLCP_TEST_CRASH_AT=phase: it kills itself
// (SIGKILL) right after the journal reaches that phase.
func crashAt(t *testing.T, phase string, args ...string) {
	t.Helper()
	cmd := exec.Command(hlcpBin, args...)
	cmd.Env = append(os.Environ(), "HLCP_TEST_CRASH_AT="+phase)
	out, err := cmd.CombinedOutput()
	if !killed(err) {
		t.Fatalf("the crash hook at %s did not fire: %v\n%s", phase, err, out)
	}
}

// killed reports whether a command's error says it died of SIGKILL.
func killed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// linkGroups maps each inode of the tree to its number of paths.
func linkGroups(t *testing.T, root string) map[[2]uint64]int {
	t.Helper()
	g := map[[2]uint64]int{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			st := fi.Sys().(*syscall.Stat_t)
			g[[2]uint64{st.Dev, st.Ino}]++
		}
		return nil
	})
	must(t, err)
	return g
}

// TestEmlinkXfsToExt4: one inode with 70,000 links on xfs (which allows
// that many) copied to ext4 (65,000 per inode): the copy splits the group
// into two inodes, every path exists with the right content, and the
// summary counts the split.
func TestEmlinkXfsToExt4(t *testing.T) {
	srcFS := testutil.MountImage(t, "xfs", 300)
	dstFS := testutil.MountImage(t, "ext4", 200, "-b", "4096")
	src, dst := filepath.Join(srcFS, "src"), filepath.Join(dstFS, "dst")
	for _, d := range []string{"a", "b", "c", "d"} {
		must(t, os.MkdirAll(filepath.Join(src, d), 0o755))
	}
	content := bytes.Repeat([]byte("link me "), 1000)
	must(t, os.WriteFile(filepath.Join(src, "a", "f"), content, 0o644))
	must(t, os.WriteFile(filepath.Join(src, "other"), []byte("o"), 0o600))
	const links = 70000
	for i := 1; i < links; i++ {
		d := []string{"a", "b", "c", "d"}[i%4]
		must(t, os.Link(filepath.Join(src, "a", "f"), filepath.Join(src, d, fmt.Sprintf("l%05d", i))))
	}
	r := mustCopy(t, src, dst, "-j", "4")
	if !strings.Contains(r.stdout, "1 inodes had more links than the destination allows") {
		t.Errorf("the summary should report one split group:\n%s", r.stdout)
	}
	g := linkGroups(t, dst)
	paths, big := 0, 0
	for _, n := range g {
		paths += n
		if n > 1 {
			big++
			if n > 65000 {
				t.Errorf("a destination inode has %d links, over ext4's 65,000", n)
			}
		}
	}
	if paths != links+1 || big != 2 {
		t.Errorf("DST has %d paths in %d linked inodes, want %d paths in 2", paths, big, links+1)
	}
	// Every path has the content (sampled: one in 97, and the ends).
	for i := 1; i < links; i += 97 {
		d := []string{"a", "b", "c", "d"}[i%4]
		b, err := os.ReadFile(filepath.Join(dst, d, fmt.Sprintf("l%05d", i)))
		if err != nil || !bytes.Equal(b, content) {
			t.Fatalf("%s/l%05d: %v", d, i, err)
		}
	}
}

// TestCopyToFat: vfat and exfat have no hard links, owners or modes (and
// a mount that everyone may write cannot hold the job's state): every
// path gets its own copy, the job succeeds, and each missing kind of
// metadata is reported once, not per file. (A kernel without vfat skips
// that case; exfat also runs through exfat-fuse.)
func TestCopyToFat(t *testing.T) {
	for _, fs := range []string{"vfat", "exfat"} {
		t.Run(fs, func(t *testing.T) { copyToFat(t, fs) })
	}
}

func copyToFat(t *testing.T, fstype string) {
	dstFS := testutil.MountImage(t, fstype, 64)
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(dstFS, "dst")
	for _, d := range []string{"snap0/x", "snap1/x"} {
		must(t, os.MkdirAll(filepath.Join(src, d), 0o755))
	}
	var want = map[string][]byte{}
	for i := 0; i < 50; i++ {
		p := fmt.Sprintf("snap0/x/file%02d.txt", i)
		data := bytes.Repeat([]byte{byte('a' + i%26)}, 1000+i)
		must(t, os.WriteFile(filepath.Join(src, p), data, 0o640))
		must(t, os.Chown(filepath.Join(src, p), 1234, 1234))
		must(t, os.Link(filepath.Join(src, p), filepath.Join(src, "snap1", "x", fmt.Sprintf("file%02d.txt", i))))
		want[p] = data
		want[fmt.Sprintf("snap1/x/file%02d.txt", i)] = data
	}
	// Its files are writable by everyone (the mount's modes): the job's
	// state may not be kept there, and the refusal says where to put it.
	var st unix.Stat_t
	must(t, unix.Stat(dstFS, &st))
	if st.Mode&0o022 != 0 {
		r := run(t, nil, "copy", "--progress=plain", src, dst)
		if r.code != 2 || !strings.Contains(r.stderr, "--state DIR") {
			t.Errorf("copy to %s with the state in DST: exit %d, want 2 with a pointer to --state\n%s", fstype, r.code, r.stderr)
		}
	}
	args := []string{"copy", "--progress=plain", "--state", filepath.Join(base, "state"), src, dst}
	r := run(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("copy to %s: exit %d\n%s\n%s", fstype, r.code, r.stdout, r.stderr)
	}
	for p, data := range want {
		b, err := os.ReadFile(filepath.Join(dst, p))
		if err != nil || !bytes.Equal(b, data) {
			t.Errorf("%s: %v (content ok: %v)", p, err, bytes.Equal(b, data))
		}
	}
	if n := strings.Count(r.stderr, "does not support hard links"); n != 1 {
		t.Errorf("the no-hard-links warning appears %d times, want once:\n%s", n, r.stderr)
	}
	if !strings.Contains(r.stdout, "50 extra copies") {
		t.Errorf("the summary should count 50 extra copies:\n%s", r.stdout)
	}
	if isRoot() {
		if n := strings.Count(r.stdout, "cannot store file owners"); n != 1 {
			t.Errorf("the owner warning appears %d times in the summary, want once:\n%s", n, r.stdout)
		}
	}
	if strings.Contains(r.stderr, "errors (") {
		t.Errorf("per-file errors reported:\n%s", r.stderr)
	}
}

// TestDestinationFills: the destination fills up (ENOSPC) in the middle of
// the copy: the job stops with exit 4, says how much is still needed and
// that a rerun resumes; status shows the job; after space is freed, the
// same command finishes it, and the copy is exact.
func TestDestinationFills(t *testing.T) {
	dstFS := testutil.MountImage(t, "ext4", 128, "-b", "4096")
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(dstFS, "dst")
	must(t, os.Mkdir(src, 0o755))
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 4, Files: 4000, DirsPerLevel: 3, Depth: 2, ChangeRate: 0.3, Seed: 11, MaxSize: 16000})
	before, err := testutil.Snapshot(src, compareOpts())
	must(t, err)
	// Leave about 40 MiB free: half of the ~80 MiB the tree needs, and
	// room for the first tasks of 8 workers (a few MiB each) to finish
	// and be checkpointed before the disk is full.
	var fs unix.Statfs_t
	must(t, unix.Statfs(dstFS, &fs))
	filler := filepath.Join(dstFS, "filler")
	fill := int64(fs.Bavail)*int64(fs.Bsize) - 40<<20
	f, err := os.Create(filler)
	must(t, err)
	must(t, unix.Fallocate(int(f.Fd()), 0, 0, fill))
	f.Close()

	r := run(t, nil, "copy", "--progress=plain", "--checkpoint=10ms", src, dst)
	if r.code != 4 {
		t.Fatalf("copy into a full destination: exit %d, want 4\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"the destination is full: about ", "is still to be copied", "is free", "rerun the same command to resume"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the message lacks %q:\n%s", want, r.stderr)
		}
	}
	st := run(t, nil, "status", dst)
	if st.code != 0 || !strings.Contains(st.stdout, "phase         copy") || strings.Contains(st.stdout, " 0 inodes") {
		t.Errorf("status: exit %d\n%s%s", st.code, st.stdout, st.stderr)
	}
	t.Logf("first run:\n%s\nstatus:\n%s", r.stderr, st.stdout)
	must(t, os.Remove(filler))
	r = mustCopy(t, src, dst)
	if !strings.Contains(r.stderr, "resuming the job from phase copy") {
		t.Errorf("the rerun did not resume:\n%s", r.stderr)
	}
	checkExact(t, before, dst, compareOpts())
}

// TestStatusChangesNothing: status shows an unfinished job (text and
// JSON) without touching its state, and says so when there is none.
func TestStatusChangesNothing(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must(t, os.Mkdir(src, 0o755))
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 2, Files: 100, Seed: 2})
	crashAt(t, "copy", "copy", "-q", src, dst)
	state := filepath.Join(dst, ".hlcp-state", "state.json")
	b1, err := os.ReadFile(state)
	must(t, err)
	var st1 unix.Stat_t
	must(t, unix.Stat(state, &st1))
	r := run(t, nil, "status", dst)
	for _, want := range []string{"unfinished job: hlcp copy", "phase         copy", "rerun `hlcp copy"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("status: exit %d, lacks %q:\n%s%s", r.code, want, r.stdout, r.stderr)
		}
	}
	r = run(t, nil, "status", "--json", dst)
	var js struct {
		Phase    string
		Identity struct{ Command string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || js.Phase != "copy" || js.Identity.Command != "copy" {
		t.Errorf("status --json: %v %+v\n%s", err, js, r.stdout)
	}
	b2, _ := os.ReadFile(state)
	var st2 unix.Stat_t
	must(t, unix.Stat(state, &st2))
	if !bytes.Equal(b1, b2) || st1.Mtim != st2.Mtim || st1.Ino != st2.Ino {
		t.Errorf("status changed the state file")
	}
	mustCopy(t, src, dst)
	if r := run(t, nil, "status", dst); r.code != 1 || !strings.Contains(r.stdout, "no unfinished hlcp job") {
		t.Errorf("status after the job: exit %d\n%s", r.code, r.stdout)
	}
}

// TestSymlinkPlantedInDst: directories of DST are replaced by symlinks to
// a directory outside DST, once between two runs of a job and once while
// the copy runs. Nothing is written outside DST; the paths below the
// replaced directories are reported.
func TestSymlinkPlantedInDst(t *testing.T) {
	base := t.TempDir()
	src, dst, outside := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "outside")
	must(t, os.Mkdir(src, 0o755))
	must(t, os.Mkdir(outside, 0o755))
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 6, Files: 2000, DirsPerLevel: 3, Depth: 2, ChangeRate: 0.1, Seed: 4, MaxSize: 50000})
	crashAt(t, "copy", "copy", "-q", src, dst)
	// Between runs: daily.0 becomes a symlink.
	must(t, os.Rename(filepath.Join(dst, "daily.0"), filepath.Join(dst, "moved.0")))
	must(t, os.Symlink(outside, filepath.Join(dst, "daily.0")))
	// While the copy runs: daily.5 (copied last in a snapshot tree's
	// inode order) is swapped as soon as the first files arrive.
	var swapped atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 20000; i++ {
			if ents, _ := os.ReadDir(filepath.Join(dst, "daily.5")); len(ents) > 0 {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		if os.Rename(filepath.Join(dst, "daily.5"), filepath.Join(dst, "moved.5")) == nil &&
			os.Symlink(outside, filepath.Join(dst, "daily.5")) == nil {
			swapped.Store(true)
		}
	}()
	r := run(t, nil, "copy", "-j", "2", "--progress=plain", src, dst)
	<-done
	ents, _ := os.ReadDir(outside)
	if len(ents) > 0 {
		t.Fatalf("hlcp wrote %d entries outside DST, through a planted symlink (first: %s)", len(ents), ents[0].Name())
	}
	if r.code != 3 || !strings.Contains(r.stderr, "daily.0/") {
		t.Errorf("exit %d, want 3 with the paths below daily.0 reported\n%s", r.code, r.stderr)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "daily.0")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the planted symlink was replaced or followed: %v %v", fi, err)
	}
	t.Logf("swap during the copy: %v", swapped.Load())
}

// TestFilesChangeDuringCopy: a file appended to all through the copy is
// recopied --retries times, then reported as changed (exit 3, listed in the
// summary); files deleted or appended between the scan and the copy are
// reported as vanished or copied in their new state.
func TestFilesChangeDuringCopy(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must(t, os.MkdirAll(filepath.Join(src, "d"), 0o755))
	for i := 0; i < 20; i++ {
		must(t, os.WriteFile(filepath.Join(src, "d", fmt.Sprintf("f%02d", i)), []byte(strings.Repeat("x", i*100)), 0o644))
	}
	must(t, os.WriteFile(filepath.Join(src, "growing.log"), bytes.Repeat([]byte("0123456789abcdef"), 4<<20), 0o644))
	// The scan and sort run; then, before the copy: one file deleted,
	// one appended to.
	crashAt(t, "mkdir", "copy", "-q", src, dst)
	must(t, os.Remove(filepath.Join(src, "d", "f03")))
	must(t, os.WriteFile(filepath.Join(src, "d", "f04"), []byte("new and longer content"), 0o644))
	// During the copy, growing.log is appended to without pause.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		f, err := os.OpenFile(filepath.Join(src, "growing.log"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return
		}
		defer f.Close()
		chunk := bytes.Repeat([]byte("+"), 4096)
		for {
			select {
			case <-stop:
				return
			default:
				f.Write(chunk)
			}
		}
	}()
	r := run(t, nil, "copy", "--retries=2", "--progress=plain", src, dst)
	close(stop)
	<-done
	if r.code != 3 {
		t.Fatalf("exit %d, want 3\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"d/f03: open: vanished since the scan", "growing.log: changed while being copied"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if !strings.Contains(r.stdout, "1 files changed while being copied") {
		t.Errorf("the summary should count the changed file:\n%s", r.stdout)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "d", "f04")); string(b) != "new and longer content" {
		t.Errorf("d/f04 has %q, want its content at the time of the copy", b)
	}
	for i := 0; i < 20; i++ {
		if i == 3 {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dst, "d", fmt.Sprintf("f%02d", i))); err != nil {
			t.Errorf("d/f%02d: %v", i, err)
		}
	}
}

// TestMoveKeepsWhatDoesNotMatch: between the copy and the removal, one
// source file grows and another gets new content of the same size and
// mtime. A move removes neither (the second only caught with --checksum),
// lists both, exits 3, and removes everything else; --remove-root removes
// SRC when it ends empty.
func TestMoveKeepsWhatDoesNotMatch(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must(t, os.MkdirAll(filepath.Join(src, "a", "b"), 0o755))
	must(t, os.MkdirAll(filepath.Join(src, "empty"), 0o755))
	for i := 0; i < 10; i++ {
		must(t, os.WriteFile(filepath.Join(src, "a", "b", fmt.Sprintf("f%d", i)), []byte(fmt.Sprintf("content %d", i)), 0o644))
	}
	must(t, os.Link(filepath.Join(src, "a", "b", "f1"), filepath.Join(src, "a", "f1-link")))
	crashAt(t, "remove", "move", "-q", src, dst)
	// grows
	must(t, os.WriteFile(filepath.Join(src, "a", "b", "f2"), []byte("content 2 and more"), 0o644))
	// same size, same mtime, other bytes
	p5 := filepath.Join(src, "a", "b", "f5")
	var st unix.Stat_t
	must(t, unix.Stat(p5, &st))
	must(t, os.WriteFile(p5, []byte("CONTENT 5"), 0o644))
	must(t, unix.UtimesNano(p5, []unix.Timespec{st.Atim, st.Mtim}))
	// A job that has removed source paths cannot be thrown away, nor
	// overwritten by another job.
	other := filepath.Join(base, "other")
	must(t, os.Mkdir(other, 0o755))
	for _, args := range [][]string{{"move", "--restart", src, dst}, {"copy", src, dst}, {"move", other, dst}} {
		if r := run(t, nil, args...); r.code != 2 || !strings.Contains(r.stderr, "already removed source paths") {
			t.Errorf("%v: exit %d, want 2 and a refusal\n%s", args, r.code, r.stderr)
		}
	}

	r := run(t, nil, "move", "--checksum", "--remove-root", "--progress=plain", src, dst)
	if r.code != 3 {
		t.Fatalf("exit %d, want 3\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"a/b/f2: kept in SRC: DST differs: size", "a/b/f5: kept in SRC: DST differs: content", "kept SRC's root"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	var left []string
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(src, p)
			left = append(left, rel)
		}
		return nil
	})
	if strings.Join(left, " ") != "a/b/f2 a/b/f5" {
		t.Errorf("left in SRC: %v, want a/b/f2 a/b/f5", left)
	}
	if _, err := os.Lstat(filepath.Join(src, "empty")); err == nil {
		t.Errorf("the empty source directory was not removed")
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "a", "b", "f5")); string(b) != "content 5" {
		t.Errorf("DST's f5 changed: %q", b)
	}
	if !strings.Contains(r.stderr, "the move is not finished") {
		t.Errorf("the move should say it is not finished:\n%s", r.stderr)
	}
	// The user deals with them (here: decides the SRC versions go), adds
	// a file the scan never saw, and reruns: the new file is reported
	// and kept, not removed and not lost.
	must(t, os.Remove(filepath.Join(src, "a", "b", "f2")))
	must(t, os.Remove(filepath.Join(src, "a", "b", "f5")))
	must(t, os.WriteFile(filepath.Join(src, "late"), []byte("added after the scan"), 0o644))
	r = run(t, nil, "move", "--checksum", "--remove-root", "--progress=plain", src, dst)
	if r.code != 3 || !strings.Contains(r.stderr, "late: kept in SRC: not in the scan") {
		t.Errorf("rerun with a late file: exit %d, want 3 with the late file listed\n%s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(src, "late")); string(b) != "added after the scan" {
		t.Errorf("the late file was lost")
	}
	must(t, os.Remove(filepath.Join(src, "late")))
	if r := run(t, nil, "move", "--checksum", "--remove-root", "--progress=plain", src, dst); r.code != 0 {
		t.Errorf("final rerun: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Lstat(src); err == nil {
		t.Errorf("SRC still exists after the move finished with --remove-root")
	}
	if _, err := os.Lstat(filepath.Join(dst, ".hlcp-state")); err == nil {
		t.Errorf("the state was not removed at the end")
	}

	// A move of its own with --remove-root.
	must(t, os.RemoveAll(filepath.Join(src, "a")))
	src2, dst2 := filepath.Join(base, "src2"), filepath.Join(base, "dst2")
	must(t, os.MkdirAll(filepath.Join(src2, "x"), 0o755))
	must(t, os.WriteFile(filepath.Join(src2, "x", "y"), []byte("y"), 0o644))
	if r := run(t, nil, "move", "--remove-root", "--progress=none", src2, dst2); r.code != 0 {
		t.Fatalf("move --remove-root: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Lstat(src2); err == nil {
		t.Errorf("--remove-root left SRC")
	}
	if b, _ := os.ReadFile(filepath.Join(dst2, "x", "y")); string(b) != "y" {
		t.Errorf("moved file: %q", b)
	}
}

// TestResumeAfterDeviceRenumbered: the source filesystem comes back on
// another loop device (as after a reboot), so every st_dev of the scan is
// stale. The rerun still resumes and the copy is exact.
func TestResumeAfterDeviceRenumbered(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root to loop-mount an ext4 image")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	base := t.TempDir()
	img, mnt := filepath.Join(base, "src.img"), filepath.Join(base, "mnt")
	must(t, os.Mkdir(mnt, 0o755))
	f, err := os.Create(img)
	must(t, err)
	must(t, f.Truncate(64<<20))
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-F", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	attach := func() string {
		out, err := exec.Command("losetup", "-f", "--show", img).Output()
		if err != nil {
			t.Skipf("no free loop device: %v", err)
		}
		dev := strings.TrimSpace(string(out))
		if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
			exec.Command("losetup", "-d", dev).Run()
			t.Skipf("mount %s: %v %s", dev, err, out)
		}
		return dev
	}
	detach := func(dev string) {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Fatalf("umount: %v %s", err, out)
		}
		exec.Command("losetup", "-d", dev).Run()
	}
	// A second loop device held meanwhile, so that the image cannot come
	// back on the first one.
	hold := filepath.Join(base, "hold.img")
	must(t, os.WriteFile(hold, make([]byte, 1<<20), 0o600))

	dev1 := attach()
	src, dst := filepath.Join(mnt, "src"), filepath.Join(base, "dst")
	must(t, os.Mkdir(src, 0o755))
	testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 3, Files: 300, Seed: 9})
	before, err := testutil.Snapshot(src, compareOpts())
	must(t, err)
	crashAt(t, "copy", "copy", "-q", src, dst)
	var st1 unix.Stat_t
	must(t, unix.Stat(src, &st1))
	detach(dev1)
	holdOut, err := exec.Command("losetup", "-f", "--show", hold).Output()
	if err == nil {
		defer exec.Command("losetup", "-d", strings.TrimSpace(string(holdOut))).Run()
	}
	dev2 := attach()
	defer detach(dev2)
	var st2 unix.Stat_t
	must(t, unix.Stat(src, &st2))
	if st1.Dev == st2.Dev {
		t.Skipf("the image came back with the same st_dev (%s, %s)", dev1, dev2)
	}
	r := mustCopy(t, src, dst)
	if !strings.Contains(r.stderr, "resuming the job") {
		t.Errorf("the rerun did not resume:\n%s", r.stderr)
	}
	checkExact(t, before, dst, compareOpts())
}

// TestMoveToExfat: a move to a filesystem with coarse times and no hard
// links (exfat, through FUSE where the kernel lacks it) removes the
// sources: their copies match within the filesystem's time resolution.
func TestMoveToExfat(t *testing.T) {
	dstFS := testutil.MountImage(t, "exfat", 64)
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(dstFS, "dst")
	must(t, os.MkdirAll(filepath.Join(src, "a"), 0o755))
	for i := 0; i < 5; i++ {
		p := filepath.Join(src, "a", fmt.Sprintf("f%d", i))
		must(t, os.WriteFile(p, []byte(fmt.Sprintf("data %d", i)), 0o644))
		ts := unix.Timespec{Sec: 1600000000 + int64(i), Nsec: 987654321}
		must(t, unix.UtimesNano(p, []unix.Timespec{ts, ts}))
	}
	must(t, os.Link(filepath.Join(src, "a", "f0"), filepath.Join(src, "f0-link")))
	r := run(t, nil, "move", "--progress=plain", "--state", filepath.Join(base, "state"), src, dst)
	if r.code != 0 {
		t.Fatalf("move to exfat: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if ents, _ := os.ReadDir(src); len(ents) != 0 {
		t.Errorf("SRC not emptied: %d entries", len(ents))
	}
	for i := 0; i < 5; i++ {
		if b, err := os.ReadFile(filepath.Join(dst, "a", fmt.Sprintf("f%d", i))); err != nil || string(b) != fmt.Sprintf("data %d", i) {
			t.Errorf("a/f%d: %q %v", i, b, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "f0-link")); string(b) != "data 0" {
		t.Errorf("f0-link: %q", b)
	}
}

// TestMoveKeepsFileChangedDuringCopy: a file written to while the move
// copies it, and then no more, has a copy that matches no single state of
// it; the move must not remove it (the copy gets the times of before the
// copy, which the file no longer has). strace slows the data copy down so
// that the write lands inside it.
func TestMoveKeepsFileChangedDuringCopy(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must(t, os.MkdirAll(src, 0o755))
	f := filepath.Join(src, "f") // the only file: its copy is the first (and only) data call
	must(t, os.WriteFile(f, bytes.Repeat([]byte("old content "), 1000), 0o644))
	cmd := exec.Command(strace, "-f", "-o", "/dev/null", "-e", "trace=copy_file_range,sendfile",
		"-e", "inject=copy_file_range,sendfile:delay_exit=1500000", hlcpBin, "move", "--retries=0", "--progress=none", "-j", "1", src, dst)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	must(t, cmd.Start())
	time.Sleep(700 * time.Millisecond)
	h, err := os.OpenFile(f, os.O_WRONLY, 0)
	must(t, err)
	h.WriteAt([]byte("NEW"), 0) // same size, new mtime and ctime
	h.Close()
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(out.String(), "f: changed while being copied") {
		t.Fatalf("move: %v, want exit 3 with f reported as changed\n%s", err, out.String())
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatalf("the file that changed during the copy was removed from SRC: %v", err)
	}
	if !bytes.HasPrefix(b, []byte("NEW")) {
		t.Errorf("SRC's f lost its new content: %q...", b[:12])
	}
}

// TestDstBindMountedInSrc: DST reached from inside SRC through a bind
// mount (which the path checks cannot see) is left out of the scan and
// reported, so that neither a copy nor a move feeds on its own output.
func TestDstBindMountedInSrc(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root to bind-mount")
	}
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	must(t, os.MkdirAll(filepath.Join(src, "m"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "f"), []byte("f"), 0o644))
	must(t, os.Mkdir(dst, 0o755))
	if out, err := exec.Command("mount", "--bind", dst, filepath.Join(src, "m")).CombinedOutput(); err != nil {
		t.Skipf("bind mount: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", filepath.Join(src, "m")).Run()
	r := run(t, nil, "move", "--progress=plain", src, dst)
	if r.code != 3 || !strings.Contains(r.stderr, "m: is the destination or the job's state") {
		t.Errorf("exit %d, want 3 with m reported\n%s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "f")); string(b) != "f" {
		t.Errorf("f not moved: %q", b)
	}
	if _, err := os.Lstat(filepath.Join(dst, "m", "m")); err == nil {
		t.Errorf("DST was copied into itself")
	}
}
