package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/testutil"
)

// straceCounts runs hlcp under strace -f -c and returns the number of calls
// per syscall name.
func straceCounts(t *testing.T, env []string, args ...string) map[string]int64 {
	t.Helper()
	out := filepath.Join(t.TempDir(), "strace.txt")
	cmd := exec.Command("strace", append([]string{"-f", "-c", "-o", out, hlcpBin}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("strace hlcp %v: %v\n%s", args, err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// "% time  seconds  usecs/call  calls  [errors]  syscall"
	counts := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 5 || fl[0] == "%" || strings.HasPrefix(fl[0], "-") {
			continue
		}
		if n, err := strconv.ParseInt(fl[3], 10, 64); err == nil {
			counts[fl[len(fl)-1]] = n
		}
	}
	return counts
}

// TestSyscallsPerInode checks, with strace as an independent witness, the
// promises that make hlcp fast on link-heavy trees: no lstat per path (the
// names, types and inode numbers come from getdents), each inode stat'ed
// about once (twice for regular files: before and after the copy, to catch
// a file that changed meanwhile, and their copies once), each regular file opened and its data
// copied once however many paths it has, and one linkat per extra path,
// or, where the kernel has io_uring, one io_uring_enter per batch of links.
func TestSyscallsPerInode(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace is not installed (CI installs it): skipping the syscall count test")
	}
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.Mkdir(src, 0o755)
	paths, nInodes := testutil.BuildSnapshots(t, src, testutil.SnapshotSpec{Snapshots: 12, Files: 400, DirsPerLevel: 3, Depth: 2, ChangeRate: 0.05, Seed: 11, MaxSize: 64 << 10})
	inodes := int64(nInodes)
	tr, err := testutil.Snapshot(src, testutil.CompareOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var dirs, files, symlinks, links int64
	seen := map[[2]uint64]bool{}
	for _, p := range tr.Paths() {
		e := tr.Get(p)
		switch {
		case e.IsDir():
			dirs++
			continue
		case seen[[2]uint64{e.Dev, e.Ino}]:
			links++
			continue
		}
		seen[[2]uint64{e.Dev, e.Ino}] = true
		if e.Type() == unix.S_IFLNK {
			symlinks++
		} else {
			files++
		}
	}
	t.Logf("tree: %d paths (%d dirs), %d inodes (%d files, %d symlinks), %d extra links", paths, dirs, inodes, files, symlinks, links)
	if links < 4*inodes {
		t.Fatalf("the tree has too few links (%d for %d inodes) to tell per-path from per-inode work", links, inodes)
	}
	ringOK := false
	if r, err := fsx.NewRing(8); err == nil {
		r.Close()
		ringOK = true
	}
	for _, ring := range []bool{false, true} {
		if ring && !ringOK {
			t.Log("no io_uring here: links are made one linkat at a time")
			continue
		}
		env := []string{"HLCP_NO_URING=1"}
		if ring {
			env = nil
		}
		dst := filepath.Join(base, fmt.Sprintf("dst-ring-%v", ring))
		c := straceCounts(t, env, "copy", "-q", "-j", "2", src, dst)
		checkSyscalls(t, c, ring, files, symlinks, dirs, links, inodes, inodes+links)
		testutil.CompareTrees(t, src, dst, testutil.CompareOptions{})
	}
}

func checkSyscalls(t *testing.T, c map[string]int64, ring bool, files, symlinks, dirs, links, inodes, nondir int64) {
	t.Helper()
	t.Logf("io_uring %v: syscalls: %v", ring, c)
	stats := c["fstat"] + c["newfstatat"] + c["statx"] + c["lstat"] + c["stat"]
	// Allowance: a regular file is stat'ed before and after its data is
	// copied, and its copy once (to skip a chown or chmod that would change
	// nothing); directories are stat'ed in the scan, the skeleton and the
	// finish; a few dozen calls are the runtime's and the state's.
	if max := 3*files + 2*symlinks + 4*dirs + 64; stats > max {
		t.Errorf("%d stat calls for %d non-directory paths and %d inodes: more than %d (per-path lstat?)", stats, nondir, inodes, max)
	}
	if stats >= nondir {
		t.Errorf("%d stat calls for %d non-directory paths: that is per path, not per inode", stats, nondir)
	}
	if !ring {
		if got := c["linkat"]; got != links {
			t.Errorf("%d linkat calls, want one per extra path: %d", got, links)
		}
	} else if got, enter := c["linkat"], c["io_uring_enter"]; got > links/10 || enter == 0 || enter > links/16 {
		// Batches are cut where a link task ends (a directory boundary
		// once it holds 256 links), so they hold fewer than a ring's 256.
		t.Errorf("%d linkat and %d io_uring_enter calls for %d extra paths: want batches of links", got, enter, links)
	}
	// Data moves once per regular inode: one copy call (or a few for large
	// or sparse files), never once per path.
	copies := c["copy_file_range"] + c["sendfile"] + c["ioctl"]
	if copies == 0 || copies > 3*files+16 {
		t.Errorf("%d data copy calls (copy_file_range %d, sendfile %d, ioctl %d) for %d regular inodes", copies, c["copy_file_range"], c["sendfile"], c["ioctl"], files)
	}
	if c["read"]+c["pread64"] > 2*files {
		t.Errorf("%d read calls for %d regular inodes: data read through user space per path?", c["read"]+c["pread64"], files)
	}
}
