package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// openDir opens the directory rel (slash-separated, "" or "." for root)
// below root one component at a time, so rel may exceed PATH_MAX.
func openDir(t testing.TB, root, rel string) int {
	t.Helper()
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", root, err)
	}
	if rel == "" || rel == "." {
		return fd
	}
	for _, c := range strings.Split(rel, "/") {
		nfd, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatalf("open %q below %s: %v", rel, root, err)
		}
		fd = nfd
	}
	return fd
}

// parentOf opens the parent directory of rel and returns its fd and rel's
// last component; the caller closes the fd.
func parentOf(t testing.TB, root, rel string) (int, string) {
	t.Helper()
	dir, name := "", rel
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		dir, name = rel[:i], rel[i+1:]
	}
	return openDir(t, root, dir), name
}

func statAt(t testing.TB, dfd int, name string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("stat %q: %v", name, err)
	}
	return st
}

func setTimesAt(t testing.TB, dfd int, name string, atime, mtime unix.Timespec) {
	t.Helper()
	if err := unix.UtimesNanoAt(dfd, name, []unix.Timespec{atime, mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("utimensat %q: %v", name, err)
	}
}

// keepTimes runs fn and then restores atime/mtime of rel as they were
// before (used to keep a parent directory's mtime when entries change).
func keepTimes(t testing.TB, root, rel string, fn func()) {
	t.Helper()
	var pfd int
	var name string
	if rel == "" || rel == "." {
		pfd, name = unix.AT_FDCWD, root
	} else {
		pfd, name = parentOf(t, root, rel)
		defer unix.Close(pfd)
	}
	st := statAt(t, pfd, name)
	fn()
	setTimesAt(t, pfd, name, st.Atim, st.Mtim)
}

// restoreAtimes puts back the atimes (and mtimes) recorded in snap on all
// regular files, devices, fifos and sockets below root: cp reads source files
// without O_NOATIME, which under relatime bumps their old atimes.
func restoreAtimes(t testing.TB, root string, snap *Tree) {
	t.Helper()
	for _, e := range snap.Entries {
		if e.IsDir() || e.Type() == unix.S_IFLNK {
			continue
		}
		pfd, name := parentOf(t, root, e.Path)
		setTimesAt(t, pfd, name, unix.NsecToTimespec(e.Atime), unix.NsecToTimespec(e.Mtime))
		unix.Close(pfd)
	}
}

// copyWithCp copies the kitchen sink at src into the empty directory dst:
// GNU cp -a --preserve=all for everything except deep/ (cp, like rsync,
// gives up on paths longer than PATH_MAX), a small fd-based copier for
// deep/, then the top directory's times. srcSnap (taken before any copy)
// is used to undo the atime bumps cp causes in src.
func copyWithCp(t testing.TB, src, dst string, srcSnap *Tree) {
	t.Helper()
	EnsureRemovable(t, dst)
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-a", "--preserve=all"}
	hasDeep := false
	for _, e := range ents {
		if e.Name() == "deep" {
			hasDeep = true
			continue
		}
		args = append(args, filepath.Join(src, e.Name()))
	}
	args = append(args, dst+"/")
	if out, err := exec.Command("cp", args...).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
	if hasDeep {
		sfd, dfd := openDir(t, src, ""), openDir(t, dst, "")
		fdCopy(t, sfd, dfd, "deep", map[uint64]fdLink{})
		unix.Close(sfd)
		unix.Close(dfd)
	}
	st := statAt(t, unix.AT_FDCWD, src)
	setTimesAt(t, unix.AT_FDCWD, dst, st.Atim, st.Mtim)
	if srcSnap != nil {
		restoreAtimes(t, src, srcSnap)
	}
}

type fdLink struct {
	dfd  int
	name string
}

// fdCopy copies name (a directory or regular file, recursively) from the
// directory sfd to the directory dfd with mode, owner, xattrs, times and
// hard links. It is only meant for the kitchen sink's deep/ chain.
func fdCopy(t testing.TB, sfd, dfd int, name string, links map[uint64]fdLink) {
	t.Helper()
	st := statAt(t, sfd, name)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
			t.Fatal(err)
		}
		s, err := unix.Openat(sfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		d, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(s), name)
		names, err := f.Readdirnames(-1)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			fdCopy(t, s, d, n, links)
		}
		f.Close()
		defer unix.Close(d)
	case unix.S_IFREG:
		if l, ok := links[st.Ino]; ok && st.Nlink > 1 {
			if err := unix.Linkat(l.dfd, l.name, dfd, name, 0); err != nil {
				t.Fatal(err)
			}
			return
		}
		in, err := unix.Openat(sfd, name, unix.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		out, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<16)
		for {
			n, err := unix.Read(in, buf)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			if _, err := unix.Write(out, buf[:n]); err != nil {
				t.Fatal(err)
			}
		}
		unix.Close(in)
		unix.Close(out)
		if st.Nlink > 1 {
			// dfd stays open for the lifetime of the copy of its directory,
			// which contains all links of the deep chain.
			links[st.Ino] = fdLink{dfd, name}
		}
	default:
		t.Fatalf("fdCopy: unsupported type %o of %q", st.Mode&unix.S_IFMT, name)
	}
	if err := unix.Fchownat(dfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	if err := unix.Fchmodat(dfd, name, st.Mode&0o7777, 0); err != nil {
		t.Fatal(err)
	}
	sp, dp := procPath(sfd, name), procPath(dfd, name)
	xs, err := readXattrs(func(b []byte) (int, error) { return unix.Llistxattr(sp, b) },
		func(n string, b []byte) (int, error) { return unix.Lgetxattr(sp, n, b) })
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range xs {
		if err := unix.Lsetxattr(dp, k, []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	setTimesAt(t, dfd, name, st.Atim, st.Mtim)
}

// fakeTB records Errorf/Fatalf calls of code under test.
type fakeTB struct {
	testing.TB
	errors []string
	fatal  bool
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
	f.fatal = true
	panic(errFakeFatal)
}

var errFakeFatal = errors.New("fake fatal")
