package testutil

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var isRoot = os.Geteuid() == 0

// kitchenSink builds a kitchen sink and snapshots it before anything reads
// it.
func kitchenSink(t *testing.T) (string, *Tree) {
	t.Helper()
	src := t.TempDir()
	desc := BuildKitchenSink(t, src)
	for _, d := range desc {
		if strings.HasPrefix(d, "SKIPPED") {
			t.Log(d)
		}
	}
	snap, err := Snapshot(src, FullCompare())
	if err != nil {
		t.Fatal(err)
	}
	return src, snap
}

func TestKitchenSinkContents(t *testing.T) {
	src, snap := kitchenSink(t)
	deep := KitchenSinkDeepDir()
	if len(deep) < 5000 {
		t.Fatalf("deep dir path is only %d bytes", len(deep))
	}
	must := func(p string, typ uint32) *Entry {
		t.Helper()
		e := snap.Get(p)
		if e == nil {
			t.Fatalf("missing %q", p)
		}
		if e.Type() != typ {
			t.Fatalf("%q: type %o, want %o", p, e.Type(), typ)
		}
		return e
	}
	for _, p := range []string{"files/empty", "names/caf\xe9", "names/line\nbreak", "names/" + KitchenSinkLongName, "ro/f1", deep + "/leaf"} {
		must(p, unix.S_IFREG)
	}
	if len(KitchenSinkLongName) != 255 {
		t.Errorf("long name has %d bytes", len(KitchenSinkLongName))
	}
	if e := must("files/big-1MiB+123", unix.S_IFREG); e.Size != 1<<20+123 || e.SHA256 == "" {
		t.Errorf("big file: %+v", e)
	}
	if e := must("files/sparse", unix.S_IFREG); e.Size != 64<<20 || e.Blocks*512 > 1<<20 {
		t.Errorf("sparse file: size %d, %d blocks", e.Size, e.Blocks)
	}
	h1, h2 := must("sym/hardlinked", unix.S_IFLNK), must("sym/hardlinked-2", unix.S_IFLNK)
	if h1.Ino != h2.Ino || h1.Nlink != 2 {
		t.Errorf("hard-linked symlink: ino %d/%d nlink %d", h1.Ino, h2.Ino, h1.Nlink)
	}
	if e := must("sym/binary", unix.S_IFLNK); e.Target != "caf\xe9/\xff\xfe\x01-target" {
		t.Errorf("binary target %q", e.Target)
	}
	if e := must(deep+"/hl-1", unix.S_IFREG); e.Ino != must(deep+"/hl-2", unix.S_IFREG).Ino {
		t.Errorf("deep hard links are separate inodes")
	}
	a, b, c := must("links/trio-1", unix.S_IFREG), must("links/trio-2", unix.S_IFREG), must("other/trio-3", unix.S_IFREG)
	if a.Ino != b.Ino || a.Ino != c.Ino || a.Nlink != 3 {
		t.Errorf("trio not one inode")
	}
	if tw1, tw2 := must("files/twin-a", unix.S_IFREG), must("files/twin-b", unix.S_IFREG); tw1.Ino == tw2.Ino || tw1.SHA256 != tw2.SHA256 || tw1.Mtime != tw2.Mtime || tw1.Atime != tw2.Atime || tw1.Mode != tw2.Mode {
		t.Errorf("twins: %+v %+v", tw1, tw2)
	}
	must("special/fifo", unix.S_IFIFO)
	must("special/socket", unix.S_IFSOCK)
	if e := must("modes/setuid-4755", unix.S_IFREG); e.Mode != unix.S_IFREG|0o4755 {
		t.Errorf("setuid mode %o", e.Mode)
	}
	if e := must("modes/sticky-1777", unix.S_IFDIR); e.Mode != unix.S_IFDIR|0o1777 {
		t.Errorf("sticky mode %o", e.Mode)
	}
	if e := must("ro", unix.S_IFDIR); e.Mode&0o7777 != 0o555 {
		t.Errorf("ro mode %o", e.Mode)
	}
	if e := must("files/empty", unix.S_IFREG); e.Mtime != ksMtimeBase+2*1_000_000_000_001 || e.Atime != ksAtimeBase+2*1_000_000_000_003 {
		t.Errorf("files/empty times %s %s", fmtNs(e.Mtime), fmtNs(e.Atime))
	}
	if e := must("sym/relative", unix.S_IFLNK); e.Mtime%1e9 == 0 || e.Atime < 4102444800e9 {
		t.Errorf("symlink times %s %s", fmtNs(e.Mtime), fmtNs(e.Atime))
	}
	if e := snap.Get("."); e.Mtime != ksDirMtimeBase {
		t.Errorf("top dir mtime %s", fmtNs(e.Mtime))
	}
	if e := must("xattrs/file", unix.S_IFREG); e.Xattrs["user.hlcp.binary"] != "\x00\x01\x02bin\xff\xfe\n" || len(e.Xattrs["user.hlcp.large"]) != 2000 {
		t.Errorf("xattrs/file xattrs %q", e.Xattrs)
	}
	if e := must("acl/file", unix.S_IFREG); e.Xattrs["system.posix_acl_access"] != string(EncodeACL([]ACLEntry{
		{ACLUserObj, 6, 0}, {ACLUser, 6, 1234}, {ACLGroupObj, 4, 0}, {ACLGroup, 4, 5678}, {ACLMask, 6, 0}, {ACLOther, 0, 0},
	})) || e.Mode&0o777 != 0o660 {
		t.Errorf("acl/file: mode %o acl %q", e.Mode, e.Xattrs["system.posix_acl_access"])
	}
	if e := must("acl/dir/inherited", unix.S_IFREG); e.Xattrs["system.posix_acl_access"] == "" {
		t.Errorf("acl/dir/inherited did not inherit an access ACL: %q", e.Xattrs)
	}
	if isRoot {
		must("locked/secret", unix.S_IFREG)
		if e := must("special/char-1-3", unix.S_IFCHR); e.Rdev != unix.Mkdev(1, 3) {
			t.Errorf("char dev rdev %x", e.Rdev)
		}
		if e := must("special/block-7-200", unix.S_IFBLK); e.Rdev != unix.Mkdev(7, 200) {
			t.Errorf("block dev rdev %x", e.Rdev)
		}
		if e := must("owners/setuid-1234", unix.S_IFREG); e.Mode != unix.S_IFREG|0o4750 || e.Uid != 1234 || e.Gid != 5678 {
			t.Errorf("owners/setuid-1234: %o %d:%d", e.Mode, e.Uid, e.Gid)
		}
		if e := must("owners/symlink-2345-6789", unix.S_IFLNK); e.Uid != 2345 || e.Gid != 6789 {
			t.Errorf("symlink owner %d:%d", e.Uid, e.Gid)
		}
		if e := must("xattrs/file", unix.S_IFREG); e.Xattrs["trusted.hlcp"] != "trusted\x00\x7f" {
			t.Errorf("trusted xattr missing: %q", e.Xattrs)
		}
		if e := must("xattrs/capability", unix.S_IFREG); len(e.Xattrs["security.capability"]) != 20 {
			t.Errorf("capability missing: %q", e.Xattrs)
		}
	}

	// A second snapshot sees exactly the same (nothing was disturbed by
	// the first one, in particular no atimes).
	again, err := Snapshot(src, FullCompare())
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(snap, again, FullCompare()); len(d) != 0 {
		t.Errorf("re-snapshot differs: %q", d)
	}
	// Determinism: a second build is identical.
	other := t.TempDir()
	BuildKitchenSink(t, other)
	snap2, err := Snapshot(other, FullCompare())
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(snap, snap2, FullCompare()); len(d) != 0 {
		t.Errorf("second kitchen sink differs: %q", d)
	}
}

func TestExactCopyHasNoDiff(t *testing.T) {
	src, snap := kitchenSink(t)
	dst := t.TempDir()
	copyWithCp(t, src, dst, snap)
	dsnap, err := Snapshot(dst, FullCompare())
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(snap, dsnap, FullCompare()); len(d) != 0 {
		t.Fatalf("exact copy differs:\n%s", strings.Join(d, "\n"))
	}
	if len(dsnap.Entries) != len(snap.Entries) || dsnap.Inodes() != snap.Inodes() {
		t.Errorf("entries %d/%d inodes %d/%d", len(snap.Entries), len(dsnap.Entries), snap.Inodes(), dsnap.Inodes())
	}
	// The source was left as it was (restoreAtimes undid cp's atime bumps)
	// so CompareTrees on the live trees is clean too.
	CompareTrees(t, src, dst, FullCompare())
}

type mutation struct {
	name     string
	root     bool // needs root
	mutate   func(t *testing.T, dst string)
	want     []string // expected differences: exact, or prefix when ending in "…"
	wantOpts *CompareOptions
}

// Helpers for mutations. Paths are relative to dst.

func chmodAt(mode uint32, rel string) func(*testing.T, string) {
	return func(t *testing.T, dst string) {
		pfd, name := parentOf(t, dst, rel)
		defer unix.Close(pfd)
		if err := unix.Fchmodat(pfd, name, mode, 0); err != nil {
			t.Fatal(err)
		}
	}
}

func shiftTime(rel string, datime, dmtime int64) func(*testing.T, string) {
	return func(t *testing.T, dst string) {
		pfd, name := parentOf(t, dst, rel)
		defer unix.Close(pfd)
		st := statAt(t, pfd, name)
		setTimesAt(t, pfd, name, unix.NsecToTimespec(unix.TimespecToNsec(st.Atim)+datime), unix.NsecToTimespec(unix.TimespecToNsec(st.Mtim)+dmtime))
	}
}

func setXattr(rel, name string, val []byte) func(*testing.T, string) {
	return func(t *testing.T, dst string) {
		pfd, n := parentOf(t, dst, rel)
		defer unix.Close(pfd)
		if err := unix.Lsetxattr(procPath(pfd, n), name, val, 0); err != nil {
			t.Fatal(err)
		}
	}
}

func removeXattr(rel, name string) func(*testing.T, string) {
	return func(t *testing.T, dst string) {
		pfd, n := parentOf(t, dst, rel)
		defer unix.Close(pfd)
		if err := unix.Lremovexattr(procPath(pfd, n), name); err != nil {
			t.Fatal(err)
		}
	}
}

// inParent runs fn on the parent directory of rel and restores the
// parent's times afterwards (creating/removing entries changes them).
func inParent(rel string, fn func(t *testing.T, pfd int, name string)) func(*testing.T, string) {
	return func(t *testing.T, dst string) {
		dir := "."
		if i := strings.LastIndexByte(rel, '/'); i >= 0 {
			dir = rel[:i]
		}
		keepTimes(t, dst, dir, func() {
			pfd, name := parentOf(t, dst, rel)
			defer unix.Close(pfd)
			fn(t, pfd, name)
		})
	}
}

// cloneOver replaces name by a new inode with identical content, mode,
// owner, xattrs and times (breaking a hard link).
func cloneOver(t *testing.T, pfd int, name string) {
	tmp := name + ".clone-tmp"
	st := statAt(t, pfd, name)
	in, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, st.Size)
	if _, err := unix.Pread(in, data, 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(in)
	out, err := unix.Openat(pfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(out, data); err != nil {
		t.Fatal(err)
	}
	unix.Close(out)
	if err := unix.Fchownat(pfd, tmp, int(st.Uid), int(st.Gid), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fchmodat(pfd, tmp, st.Mode&0o7777, 0); err != nil {
		t.Fatal(err)
	}
	xs, err := readXattrs(func(b []byte) (int, error) { return unix.Llistxattr(procPath(pfd, name), b) },
		func(n string, b []byte) (int, error) { return unix.Lgetxattr(procPath(pfd, name), n, b) })
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range xs {
		if err := unix.Lsetxattr(procPath(pfd, tmp), k, []byte(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	setTimesAt(t, pfd, tmp, st.Atim, st.Mtim)
	if err := unix.Renameat(pfd, tmp, pfd, name); err != nil {
		t.Fatal(err)
	}
}

// resymlink replaces the symlink name by a new symlink to target with the
// same owner and times.
func resymlink(target string) func(*testing.T, int, string) {
	return func(t *testing.T, pfd int, name string) {
		st := statAt(t, pfd, name)
		if target == "" {
			buf := make([]byte, 4096)
			n, err := unix.Readlinkat(pfd, name, buf)
			if err != nil {
				t.Fatal(err)
			}
			target = string(buf[:n])
		}
		tmp := name + ".tmp"
		if err := unix.Symlinkat(target, pfd, tmp); err != nil {
			t.Fatal(err)
		}
		_ = unix.Fchownat(pfd, tmp, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW)
		setTimesAt(t, pfd, tmp, st.Atim, st.Mtim)
		if err := unix.Renameat(pfd, tmp, pfd, name); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOracleDetectsMutations(t *testing.T) {
	src, snap := kitchenSink(t)
	deep := KitchenSinkDeepDir()
	acl := func(userPerm uint16) []byte {
		return EncodeACL([]ACLEntry{{ACLUserObj, 7, 0}, {ACLUser, userPerm, 1234}, {ACLGroupObj, 5, 0}, {ACLMask, 5, 0}, {ACLOther, 0, 0}})
	}
	ignoreRoot := FullCompare()
	ignoreRoot.IgnoreRootMeta = true
	noAtime := FullCompare()
	noAtime.Atime = false

	muts := []mutation{
		{name: "flip a byte keeping size and times", mutate: func(t *testing.T, dst string) {
			pfd, name := parentOf(t, dst, "files/size-4096")
			defer unix.Close(pfd)
			st := statAt(t, pfd, name)
			fd, err := unix.Openat(pfd, name, unix.O_RDWR|unix.O_NOATIME|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			unix.Pread(fd, b, 1234)
			b[0] ^= 0x20
			unix.Pwrite(fd, b, 1234)
			unix.Close(fd)
			setTimesAt(t, pfd, name, st.Atim, st.Mtim)
		}, want: []string{"content files/size-4096: sha256 …"}},
		{name: "flip a byte in the sparse file", mutate: func(t *testing.T, dst string) {
			pfd, name := parentOf(t, dst, "files/sparse")
			defer unix.Close(pfd)
			st := statAt(t, pfd, name)
			fd, _ := unix.Openat(pfd, name, unix.O_WRONLY|unix.O_CLOEXEC, 0)
			unix.Pwrite(fd, []byte{1}, 60<<20) // inside the trailing hole
			unix.Close(fd)
			setTimesAt(t, pfd, name, st.Atim, st.Mtim)
		}, want: []string{"content files/sparse: sha256 …"}},
		{name: "grow a file by one byte", mutate: func(t *testing.T, dst string) {
			pfd, name := parentOf(t, dst, "files/size-4095")
			defer unix.Close(pfd)
			st := statAt(t, pfd, name)
			fd, _ := unix.Openat(pfd, name, unix.O_WRONLY|unix.O_CLOEXEC, 0)
			unix.Ftruncate(fd, 4096)
			unix.Close(fd)
			setTimesAt(t, pfd, name, st.Atim, st.Mtim)
		}, want: []string{"content files/size-4095: …", "size files/size-4095: 4095 vs 4096"}},
		{name: "chmod a permission bit", mutate: chmodAt(0o640, "modes/private-0600"),
			want: []string{"mode modes/private-0600: 0100600 vs 0100640"}},
		{name: "drop setuid", mutate: chmodAt(0o755, "modes/setuid-4755"),
			want: []string{"mode modes/setuid-4755: 0104755 vs 0100755"}},
		{name: "drop sticky bit of a dir", mutate: chmodAt(0o777, "modes/sticky-1777"),
			want: []string{"mode modes/sticky-1777: 041777 vs 040777"}},
		{name: "chmod the 0000 dir", root: true, mutate: chmodAt(0o700, "locked"),
			want: []string{"mode locked: 040000 vs 040700"}},
		{name: "chown a file", root: true, mutate: func(t *testing.T, dst string) {
			pfd, name := parentOf(t, dst, "owners/file-1234-5678")
			defer unix.Close(pfd)
			if err := unix.Fchownat(pfd, name, 1234, 5679, 0); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"owner owners/file-1234-5678: 1234:5678 vs 1234:5679"}},
		{name: "lchown a symlink", root: true, mutate: func(t *testing.T, dst string) {
			pfd, name := parentOf(t, dst, "owners/symlink-2345-6789")
			defer unix.Close(pfd)
			if err := unix.Fchownat(pfd, name, 0, 0, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"owner owners/symlink-2345-6789: 2345:6789 vs 0:0"}},
		{name: "mtime +1ns", mutate: shiftTime("files/empty", 0, 1),
			want: []string{fmt.Sprintf("mtime files/empty: %s vs %s", fmtNs(snap.Get("files/empty").Mtime), fmtNs(snap.Get("files/empty").Mtime+1))}},
		{name: "atime +1ns", mutate: shiftTime("files/one-byte", 1, 0),
			want: []string{"atime files/one-byte: …"}},
		{name: "atime +1ns not compared without Atime", mutate: shiftTime("files/one-byte", 1, 0),
			want: nil, wantOpts: &noAtime},
		{name: "symlink mtime -1ns", mutate: shiftTime("sym/dangling", 0, -1),
			want: []string{"mtime sym/dangling: …"}},
		{name: "symlink atime +1s", mutate: shiftTime("sym/binary", 1e9, 0),
			want: []string{"atime sym/binary: …"}},
		{name: "directory mtime +1ns", mutate: shiftTime("links", 0, 1),
			want: []string{"mtime links: …"}},
		{name: "directory atime is not compared", mutate: shiftTime("links", 1e9, 0),
			want: nil},
		{name: "top directory mtime", mutate: shiftTime(".", 0, 1e9),
			want: []string{"mtime .: …"}},
		{name: "top directory mtime with IgnoreRootMeta", mutate: shiftTime(".", 0, 1e9),
			want: nil, wantOpts: &ignoreRoot},
		{name: "deep leaf mtime", mutate: shiftTime(deep+"/leaf", 0, 5),
			want: []string{"mtime " + deep + "/leaf: …"}},
		{name: "change an xattr value", mutate: setXattr("xattrs/file", "user.hlcp.binary", []byte("\x00\x01\x02bin\xff\xfd\n")),
			want: []string{`xattr xattrs/file: user.hlcp.binary differs: "\x00\x01\x02bin\xff\xfe\n" vs "\x00\x01\x02bin\xff\xfd\n"`}},
		{name: "remove a directory xattr", mutate: removeXattr("xattrs/dir", "user.hlcp.dir"),
			want: []string{"xattr xattrs/dir: user.hlcp.dir only in src"}},
		{name: "add an xattr", mutate: setXattr("files/empty", "user.new", []byte("x")),
			want: []string{"xattr files/empty: user.new only in dst"}},
		{name: "remove a trusted xattr", root: true, mutate: removeXattr("xattrs/file", "trusted.hlcp"),
			want: []string{"xattr xattrs/file: trusted.hlcp only in src"}},
		{name: "remove a file capability", root: true, mutate: removeXattr("xattrs/capability", "security.capability"),
			want: []string{"xattr xattrs/capability: security.capability only in src"}},
		{name: "remove an access ACL", mutate: removeXattr("acl/file", "system.posix_acl_access"),
			want: []string{"xattr acl/file: system.posix_acl_access only in src"}},
		{name: "change a default ACL", mutate: setXattr("acl/dir", "system.posix_acl_default", acl(7)),
			want: []string{"xattr acl/dir: system.posix_acl_default differs: …"}},
		{name: "break a hard link", mutate: inParent("links/trio-2", cloneOver),
			want: []string{"links: src groups {links/trio-1,links/trio-2,other/trio-3} but dst splits it: {links/trio-1,other/trio-3} {links/trio-2}"}},
		{name: "break the deep hard link", mutate: inParent(deep+"/hl-2", cloneOver),
			want: []string{"links: src groups {" + deep + "/hl-1," + deep + "/hl-2} but dst splits it: {" + deep + "/hl-1} {" + deep + "/hl-2}"}},
		{name: "break a hard-linked symlink", mutate: inParent("sym/hardlinked-2", resymlink("")),
			want: []string{"links: src groups {sym/hardlinked,sym/hardlinked-2} but dst splits it: {sym/hardlinked-2} {sym/hardlinked}"}},
		{name: "join two inodes", mutate: inParent("files/twin-b", func(t *testing.T, pfd int, name string) {
			if err := unix.Linkat(pfd, "twin-a", pfd, "twin-tmp", 0); err != nil {
				t.Fatal(err)
			}
			if err := unix.Renameat(pfd, "twin-tmp", pfd, name); err != nil {
				t.Fatal(err)
			}
		}), want: []string{"links: dst groups {files/twin-a,files/twin-b} but src splits it: {files/twin-a} {files/twin-b}"}},
		{name: "delete a file", mutate: inParent("files/one-byte", func(t *testing.T, pfd int, name string) {
			if err := unix.Unlinkat(pfd, name, 0); err != nil {
				t.Fatal(err)
			}
		}), want: []string{"only in src: files/one-byte"}},
		{name: "delete one link of a group", mutate: inParent("other/pair-2", func(t *testing.T, pfd int, name string) {
			unix.Unlinkat(pfd, name, 0)
		}), want: []string{"only in src: other/pair-2"}},
		{name: "delete an empty dir", mutate: inParent("emptydir", func(t *testing.T, pfd int, name string) {
			if err := unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR); err != nil {
				t.Fatal(err)
			}
		}), want: []string{"only in src: emptydir"}},
		{name: "add a file", mutate: inParent("files/extra", func(t *testing.T, pfd int, name string) {
			fd, err := unix.Openat(pfd, name, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
		}), want: []string{"only in dst: files/extra"}},
		{name: "rename a non-UTF-8 name", mutate: inParent("names/caf\xe9", func(t *testing.T, pfd int, name string) {
			if err := unix.Renameat(pfd, name, pfd, "cafe"); err != nil {
				t.Fatal(err)
			}
		}), want: []string{`only in dst: names/cafe`, `only in src: "names/caf\xe9"`}},
		{name: "rename the newline name", mutate: inParent("names/line\nbreak", func(t *testing.T, pfd int, name string) {
			if err := unix.Renameat(pfd, name, pfd, "line\rbreak"); err != nil {
				t.Fatal(err)
			}
		}), want: []string{`only in dst: "names/line\rbreak"`, `only in src: "names/line\nbreak"`}},
		{name: "retarget a symlink", mutate: inParent("sym/relative", resymlink("../files/size-4095")),
			want: []string{`target sym/relative: "../files/one-byte" vs "../files/size-4095"`}},
		{name: "replace a fifo by a file", mutate: inParent("special/fifo", func(t *testing.T, pfd int, name string) {
			st := statAt(t, pfd, name)
			unix.Unlinkat(pfd, name, 0)
			fd, err := unix.Openat(pfd, name, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			setTimesAt(t, pfd, name, st.Atim, st.Mtim)
		}), want: []string{"type special/fifo: fifo vs regular file"}},
		{name: "change a device number", root: true, mutate: inParent("special/char-1-3", func(t *testing.T, pfd int, name string) {
			st := statAt(t, pfd, name)
			unix.Unlinkat(pfd, name, 0)
			if err := unix.Mknodat(pfd, name, st.Mode, int(unix.Mkdev(1, 5))); err != nil {
				t.Fatal(err)
			}
			unix.Fchmodat(pfd, name, st.Mode&0o7777, 0)
			setTimesAt(t, pfd, name, st.Atim, st.Mtim)
		}), want: []string{"rdev special/char-1-3: 1:3 vs 1:5"}},
	}

	for _, m := range muts {
		t.Run(m.name, func(t *testing.T) {
			if m.root && !isRoot {
				t.Skip("needs root")
			}
			opts := FullCompare()
			if m.wantOpts != nil {
				opts = *m.wantOpts
			}
			dst := t.TempDir()
			copyWithCp(t, src, dst, snap)
			m.mutate(t, dst)
			dsnap, err := Snapshot(dst, opts)
			if err != nil {
				t.Fatal(err)
			}
			got := Diff(snap, dsnap, opts)
			if !matchDiffs(got, m.want) {
				t.Errorf("Diff reported\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(m.want, "\n  "))
			}
		})
	}
}

// matchDiffs compares got with want; a want ending in "…" matches by prefix.
func matchDiffs(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if w, ok := strings.CutSuffix(want[i], "…"); ok {
			if !strings.HasPrefix(got[i], w) {
				return false
			}
		} else if got[i] != want[i] {
			return false
		}
	}
	return true
}

func TestDiffLinkPartition(t *testing.T) {
	mk := func(groups map[string]uint64) *Tree {
		tr := &Tree{Entries: map[string]*Entry{".": {Path: ".", Mode: unix.S_IFDIR | 0o755, Ino: 1}}}
		for p, ino := range groups {
			tr.Entries[p] = &Entry{Path: p, Mode: unix.S_IFREG | 0o644, Ino: ino, Dev: 7}
		}
		return tr
	}
	src := mk(map[string]uint64{"a": 10, "b": 10, "c": 10, "d": 11, "e": 12, "f": 13})
	// Same partition with other inode numbers and another device: no diff.
	same := mk(map[string]uint64{"a": 20, "b": 20, "c": 20, "d": 21, "e": 22, "f": 23})
	for _, e := range same.Entries {
		e.Dev = 9
	}
	if d := Diff(src, same, CompareOptions{}); len(d) != 0 {
		t.Errorf("renumbered tree differs: %q", d)
	}
	dst := mk(map[string]uint64{"a": 20, "b": 20, "c": 21, "d": 22, "e": 22, "f": 23})
	want := []string{
		"links: dst groups {d,e} but src splits it: {d} {e}",
		"links: src groups {a,b,c} but dst splits it: {a,b} {c}",
	}
	if d := Diff(src, dst, CompareOptions{}); !reflect.DeepEqual(d, want) {
		t.Errorf("got %q\nwant %q", d, want)
	}
	// A path missing on one side is reported once and left out of links.
	delete(dst.Entries, "c")
	want = []string{"links: dst groups {d,e} but src splits it: {d} {e}", "only in src: c"}
	if d := Diff(src, dst, CompareOptions{}); !reflect.DeepEqual(d, want) {
		t.Errorf("got %q\nwant %q", d, want)
	}
}

func TestCompareTreesReports(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for i := 0; i < 60; i++ {
		os.WriteFile(filepath.Join(a, fmt.Sprintf("f%02d", i)), []byte("x"), 0o644)
	}
	ft := &fakeTB{TB: t}
	CompareTrees(ft, a, b, CompareOptions{IgnoreRootMeta: true})
	if len(ft.errors) != 1 {
		t.Fatalf("want 1 error, got %q", ft.errors)
	}
	msg := ft.errors[0]
	if !strings.Contains(msg, "60 difference(s)") || !strings.Contains(msg, "only in src: f00") ||
		!strings.Contains(msg, "only in src: f49") || strings.Contains(msg, "only in src: f50") || !strings.Contains(msg, "and 10 more") {
		t.Errorf("unexpected report:\n%s", msg)
	}
	// Comparing what a snapshot did not record is an error, not a pass.
	sa, _ := Snapshot(a, CompareOptions{})
	if d := Diff(sa, sa, CompareOptions{Content: true}); len(d) != 1 || !strings.HasPrefix(d[0], "options: Content") {
		t.Errorf("Diff with Content on snapshots without content: %q", d)
	}
	ft = &fakeTB{TB: t}
	CompareTrees(ft, a, a, FullCompare())
	if len(ft.errors) != 0 {
		t.Errorf("identical trees reported: %q", ft.errors)
	}
}

func TestRsyncItemize(t *testing.T) {
	src := t.TempDir()
	BuildKitchenSink(t, src)
	// rsync (like cp) refuses paths longer than PATH_MAX.
	if err := os.RemoveAll(filepath.Join(src, "deep")); err != nil {
		t.Fatal(err)
	}
	snap, err := Snapshot(src, FullCompare())
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	copyWithCp(t, src, dst, snap)
	if lines := RsyncItemize(t, src, dst); len(lines) != 0 {
		t.Fatalf("rsync reports changes on an exact copy:\n%s", strings.Join(lines, "\n"))
	}

	check := func(what string, mutate func(dst string), want string) {
		t.Helper()
		dst := t.TempDir()
		copyWithCp(t, src, dst, snap)
		mutate(dst)
		lines := RsyncItemize(t, src, dst)
		if len(lines) != 1 || lines[0] != want {
			t.Errorf("%s: rsync itemized %q, want [%q]", what, lines, want)
		}
	}
	check("chmod", func(dst string) { chmodAt(0o640, "modes/private-0600")(t, dst) }, ".f...p..... modes/private-0600")
	check("top dir mtime", func(dst string) { shiftTime(".", 0, 1e9)(t, dst) }, ".d..t...... ./")
	check("xattr", func(dst string) { setXattr("xattrs/file", "user.new", []byte("x"))(t, dst) }, ".f........x xattrs/file")
	check("content", func(dst string) {
		keepTimes(t, dst, "files/size-4096", func() {
			f, _ := os.OpenFile(filepath.Join(dst, "files/size-4096"), os.O_WRONLY, 0)
			f.WriteAt([]byte("X"), 7)
			f.Close()
		})
	}, ">fc........ files/size-4096")
	check("break a hard link", func(dst string) { inParent("links/trio-2", cloneOver)(t, dst) },
		"hf          links/trio-2 => links/trio-1")
	check("newline name", func(dst string) { shiftTime("names/line\nbreak", 0, 1e9)(t, dst) },
		".f..t...... names/line\\#012break")
	check("extra", func(dst string) {
		keepTimes(t, dst, "files", func() { os.WriteFile(filepath.Join(dst, "files/zz"), nil, 0o644) })
	}, "*deleting   files/zz")
}

func TestBuildSnapshots(t *testing.T) {
	spec := SnapshotSpec{Snapshots: 4, Files: 3000, DirsPerLevel: 3, Depth: 3, ChangeRate: 0.1, Seed: 42}
	dir := t.TempDir()
	start := time.Now()
	paths, inodes := BuildSnapshots(t, dir, spec)
	t.Logf("built %d paths, %d inodes in %v", paths, inodes, time.Since(start))
	snap, err := Snapshot(dir, FullCompare())
	if err != nil {
		t.Fatal(err)
	}
	if got := len(snap.Entries) - 1; got != paths {
		t.Errorf("paths: returned %d, tree has %d", paths, got)
	}
	if got := snap.Inodes() - 1; got != inodes {
		t.Errorf("inodes: returned %d, tree has %d", inodes, got)
	}
	for i := 0; i < 4; i++ {
		if snap.Get(fmt.Sprintf("daily.%d", i)) == nil {
			t.Fatalf("daily.%d missing", i)
		}
	}
	st0, st3 := snap.Get("daily.0/stable-link"), snap.Get("daily.3/stable-link")
	if st0 == nil || st3 == nil || st0.Ino != st3.Ino || st0.Type() != unix.S_IFLNK {
		t.Errorf("stable-link is not one symlink inode across snapshots")
	}
	// Most files of daily.0 share their inode with daily.1.
	shared, total := 0, 0
	for p, e := range snap.Entries {
		if rest, ok := strings.CutPrefix(p, "daily.0/"); ok && e.Type() == unix.S_IFREG {
			total++
			if o := snap.Get("daily.1/" + rest); o != nil && o.Ino == e.Ino {
				shared++
			}
		}
	}
	if total < 2900 || shared < total*8/10 || shared == total {
		t.Errorf("daily.0: %d files, %d shared with daily.1", total, shared)
	}
	// Deterministic: the same spec yields an identical tree.
	dir2 := t.TempDir()
	BuildSnapshots(t, dir2, spec)
	snap2, err := Snapshot(dir2, FullCompare())
	if err != nil {
		t.Fatal(err)
	}
	opts := FullCompare()
	opts.IgnoreRootMeta = true
	if d := Diff(snap, snap2, opts); len(d) != 0 {
		t.Errorf("second build differs (%d): %q", len(d), d[:min(len(d), 10)])
	}
	// A different seed gives a different tree.
	dir3 := t.TempDir()
	spec.Seed = 43
	BuildSnapshots(t, dir3, spec)
	snap3, err := Snapshot(dir3, CompareOptions{Content: true})
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(snap, snap3, CompareOptions{Content: true, IgnoreRootMeta: true}); len(d) == 0 {
		t.Errorf("seed 43 gives the same tree as seed 42")
	}
}

// memTempDir returns a temporary directory on tmpfs (/dev/shm) when there
// is one, so that a scale test measures the code, not a shared disk.
func memTempDir(t *testing.T) string {
	var sfs unix.Statfs_t
	if unix.Statfs("/dev/shm", &sfs) == nil && sfs.Type == unix.TMPFS_MAGIC {
		if d, err := os.MkdirTemp("/dev/shm", "hlcp-testutil-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

func TestSnapshotScale(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := memTempDir(t)
	start := time.Now()
	paths, inodes := BuildSnapshots(t, dir, SnapshotSpec{Snapshots: 5, Files: 20000, DirsPerLevel: 6, Depth: 3, ChangeRate: 0.05, Seed: 1, MaxSize: 1024})
	built := time.Since(start)
	start = time.Now()
	snap, err := Snapshot(dir, FullCompare())
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("BuildSnapshots: %d paths, %d inodes in %v; Snapshot (full) in %v", paths, inodes, built, took)
	if len(snap.Entries) != paths+1 {
		t.Errorf("snapshot has %d entries, want %d", len(snap.Entries), paths+1)
	}
	start = time.Now()
	if d := Diff(snap, snap, FullCompare()); len(d) != 0 {
		t.Errorf("self diff: %q", d[:1])
	}
	t.Logf("Diff in %v", time.Since(start))
}

func TestMountImage(t *testing.T) {
	magic := map[string]int64{"ext4": unix.EXT4_SUPER_MAGIC, "xfs": unix.XFS_SUPER_MAGIC, "btrfs": unix.BTRFS_SUPER_MAGIC, "vfat": unix.MSDOS_SUPER_MAGIC}
	for _, fs := range []string{"ext4", "xfs", "btrfs", "vfat"} {
		t.Run(fs, func(t *testing.T) {
			if fs != "ext4" && testing.Short() {
				t.Skip("short")
			}
			var mnt string
			if fs == "ext4" {
				mnt = MountImage(t, fs, 128, "-N", "4096", "-b", "4096")
			} else {
				mnt = MountImage(t, fs, 64)
			}
			var sfs unix.Statfs_t
			if err := unix.Statfs(mnt, &sfs); err != nil {
				t.Fatal(err)
			}
			const fuseMagic = 0x65735546 // a FUSE driver stands in for a filesystem the kernel lacks
			if sfs.Type != magic[fs] && sfs.Type != fuseMagic {
				t.Fatalf("statfs type %#x, want %#x", sfs.Type, magic[fs])
			}
			ents, _ := os.ReadDir(mnt)
			if len(ents) != 0 {
				t.Errorf("mount point not empty: %v", ents)
			}
			if fs == "vfat" {
				// No symlinks, hard links, special files, owners or
				// xattrs: only check that the oracle copes.
				if err := os.WriteFile(filepath.Join(mnt, "file.txt"), []byte("hi"), 0o644); err != nil {
					t.Fatal(err)
				}
				sn, err := Snapshot(mnt, FullCompare())
				if err != nil {
					t.Fatal(err)
				}
				if e := sn.Get("file.txt"); e == nil || len(e.Xattrs) != 0 {
					t.Errorf("vfat file: %+v", e)
				}
				return
			}
			// Round trip the kitchen sink: build it on the image, copy it
			// to the system temp dir and compare.
			src := filepath.Join(mnt, "src")
			os.Mkdir(src, 0o755)
			desc := BuildKitchenSink(t, src)
			for _, d := range desc {
				if strings.HasPrefix(d, "SKIPPED") {
					t.Log(d)
				}
			}
			snap, err := Snapshot(src, FullCompare())
			if err != nil {
				t.Fatal(err)
			}
			dst := t.TempDir()
			copyWithCp(t, src, dst, snap)
			dsnap, err := Snapshot(dst, FullCompare())
			if err != nil {
				t.Fatal(err)
			}
			if d := Diff(snap, dsnap, FullCompare()); len(d) != 0 {
				t.Errorf("copy from %s differs:\n%s", fs, strings.Join(d, "\n"))
			}
		})
	}
}

func TestEncodeACL(t *testing.T) {
	got := EncodeACL([]ACLEntry{{ACLOther, 0, 99}, {ACLUser, 6, 1000}, {ACLUserObj, 7, 5}, {ACLUser, 4, 5}})
	want := []byte{
		2, 0, 0, 0,
		1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff,
		2, 0, 4, 0, 5, 0, 0, 0,
		2, 0, 6, 0, 0xe8, 3, 0, 0,
		0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
	}
	if !bytes.Equal(got, want) {
		t.Errorf("EncodeACL = % x\nwant        % x", got, want)
	}
}

func TestShowPath(t *testing.T) {
	for in, want := range map[string]string{
		"a/b":         "a/b",
		"with spaces": "with spaces",
		"caf\xe9":     `"caf\xe9"`,
		"a\nb":        `"a\nb"`,
		" x":          `" x"`,
		"naïve":       "naïve",
		"":            ".",
	} {
		if got := showPath(in); got != want {
			t.Errorf("showPath(%q) = %s, want %s", in, got, want)
		}
	}
}
