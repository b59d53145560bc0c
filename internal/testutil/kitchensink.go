package testutil

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Fixed timestamps used by BuildKitchenSink (ns since the epoch).
//
// Regular files, devices, fifos and sockets get atimes in the past
// (1600000000.x): they stay put as long as everybody reads file contents
// with O_NOATIME (the oracle does; rsync needs --open-noatime).
//
// Symlinks get atimes far in the future (2100-01-01 + k): readlink(2)
// always "accesses" a symlink and there is no O_NOATIME for it, but the
// relatime rules (the default mount option) only update an atime that is
// older than mtime/ctime or than a day, which a future atime never is. Under
// strictatime mounts reading a symlink still bumps its atime.
const (
	ksMtimeBase    = 1600000000_123456789
	ksAtimeBase    = 1600000000_987654321
	ksSymAtimeBase = 4102444800_123456789
	ksDirMtimeBase = 1500000000_111111111
	ksDirAtimeBase = 1500000000_222222222
)

// KitchenSinkDeepDepth and KitchenSinkDeepComponent describe the deep chain
// of BuildKitchenSink: "deep/" followed by KitchenSinkDeepDepth directories
// whose names are KitchenSinkDeepComponent bytes long.
const (
	KitchenSinkDeepDepth     = 26
	KitchenSinkDeepComponent = 200
)

// KitchenSinkDeepDir returns the relative path of the bottom directory of the
// deep chain (longer than 5000 bytes).
func KitchenSinkDeepDir() string {
	parts := []string{"deep"}
	for i := 0; i < KitchenSinkDeepDepth; i++ {
		parts = append(parts, deepComponent(i))
	}
	return strings.Join(parts, "/")
}

func deepComponent(i int) string {
	p := fmt.Sprintf("%02d-", i)
	return p + strings.Repeat("d", KitchenSinkDeepComponent-len(p))
}

// KitchenSinkLongName is the 255-byte file name created under names/.
var KitchenSinkLongName = "long-" + strings.Repeat("n", 250-len("long-")) + "-255."

type timedPath struct {
	dirfd        int
	name         string
	atime, mtime int64
}

type dirRec struct {
	timedPath
	fd   int
	perm uint32
}

type sink struct {
	t       testing.TB
	root    bool
	desc    []string
	rnd     *rand.ChaCha8
	k       int64
	times   []timedPath
	dirs    []dirRec
	extraFd []int
}

func (s *sink) say(format string, args ...any) {
	s.desc = append(s.desc, fmt.Sprintf(format, args...))
}

func (s *sink) fatal(what string, err error) {
	s.t.Helper()
	s.t.Fatalf("BuildKitchenSink: %s: %v", what, err)
}

func (s *sink) random(n int) []byte {
	b := make([]byte, n)
	s.rnd.Read(b)
	return b
}

func (s *sink) nextTimes(sym bool) (atime, mtime int64) {
	s.k++
	mtime = ksMtimeBase + s.k*1_000_000_000_001
	atime = ksAtimeBase + s.k*1_000_000_000_003
	if sym {
		atime = ksSymAtimeBase + s.k*1_000_000_007
	}
	return atime, mtime
}

// mkdir creates dir name below pfd; perm is applied at the very end.
func (s *sink) mkdir(pfd int, name string, perm uint32) int {
	s.t.Helper()
	if err := unix.Mkdirat(pfd, name, 0o700); err != nil {
		s.fatal("mkdir "+strconv.Quote(name), err)
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		s.fatal("open dir "+strconv.Quote(name), err)
	}
	s.k++
	s.dirs = append(s.dirs, dirRec{
		timedPath: timedPath{pfd, name, ksDirAtimeBase + s.k*1_000_000_000_005, ksDirMtimeBase + s.k*1_000_000_000_001},
		fd:        fd, perm: perm,
	})
	return fd
}

func (s *sink) file(pfd int, name string, data []byte, perm uint32) {
	s.t.Helper()
	fd, err := unix.Openat(pfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		s.fatal("create "+strconv.Quote(name), err)
	}
	defer unix.Close(fd)
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err != nil {
			s.fatal("write "+strconv.Quote(name), err)
		}
		data = data[n:]
	}
	if err := unix.Fchmod(fd, perm); err != nil {
		s.fatal("chmod "+strconv.Quote(name), err)
	}
	a, m := s.nextTimes(false)
	s.times = append(s.times, timedPath{pfd, name, a, m})
}

func (s *sink) symlink(pfd int, name, target string) {
	s.t.Helper()
	if err := unix.Symlinkat(target, pfd, name); err != nil {
		s.fatal("symlink "+strconv.Quote(name), err)
	}
	a, m := s.nextTimes(true)
	s.times = append(s.times, timedPath{pfd, name, a, m})
}

func (s *sink) mknod(pfd int, name string, mode uint32, dev int) error {
	if err := unix.Mknodat(pfd, name, mode, dev); err != nil {
		return err
	}
	if err := unix.Fchmodat(pfd, name, mode&0o7777, 0); err != nil {
		s.fatal("chmod "+strconv.Quote(name), err)
	}
	a, m := s.nextTimes(false)
	s.times = append(s.times, timedPath{pfd, name, a, m})
	return nil
}

func (s *sink) link(ofd int, oname string, nfd int, nname string) {
	s.t.Helper()
	if err := unix.Linkat(ofd, oname, nfd, nname, 0); err != nil {
		s.fatal("link "+strconv.Quote(nname), err)
	}
}

// chown changes owner and then re-applies perm (chown clears setuid/setgid
// on executables); perm < 0 means "leave the mode alone" (symlinks).
func (s *sink) chown(pfd int, name string, uid, gid int, perm int) {
	s.t.Helper()
	if err := unix.Fchownat(pfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		s.fatal("chown "+strconv.Quote(name), err)
	}
	if perm >= 0 {
		if err := unix.Fchmodat(pfd, name, uint32(perm), 0); err != nil {
			s.fatal("chmod "+strconv.Quote(name), err)
		}
	}
}

func procPath(pfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + name
}

func unsupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// xattr sets an xattr; unsupported xattrs are reported in the description and
// false is returned.
func (s *sink) xattr(pfd int, name, label, xname string, val []byte) bool {
	s.t.Helper()
	err := unix.Lsetxattr(procPath(pfd, name), xname, val, 0)
	if err == nil {
		return true
	}
	if unsupported(err) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.E2BIG) ||
		(errors.Is(err, unix.EINVAL) && strings.HasPrefix(xname, "security.")) {
		s.say("SKIPPED %s: xattr %s rejected by the filesystem: %v", label, xname, err)
		return false
	}
	s.fatal("setxattr "+xname+" on "+label, err)
	return false
}

// BuildKitchenSink creates under dir (which must exist and be empty) a tree
// with every file type and all metadata hlcp must preserve, and returns a
// short description of what it made (items the filesystem or the lack of
// root privileges did not allow are listed as "SKIPPED ..."). The tree is
// deterministic. Layout:
//
//	files/     sizes 0, 1, 4095, 4096, 1 MiB+123 (random), a 64 MiB sparse file,
//	           twin-a/twin-b (separate inodes with identical content and metadata)
//	links/     trio-1, trio-2 (+ other/trio-3) one inode; pair-1 (+ other/pair-2)
//	sym/       relative, absolute, dangling, non-UTF-8 target, to-dir,
//	           hardlinked + hardlinked-2 (one symlink inode with two names)
//	special/   fifo, socket, char device 1:3 and block device 7:200 (root)
//	modes/     04755, 02755, 06755, 0600, 0444 files; sticky 01777 and 02775 dirs
//	owners/    (root) 1234:5678 file and dir, lchown'd symlink, setuid file owned by 1234
//	xattrs/    user.* on a file (binary, empty, 2000-byte values) and a dir;
//	           trusted.* and security.capability (root)
//	acl/       file with access ACL incl. named user/group; dir with default ACL
//	           and a file that inherited it
//	ro/        0555 dir with two files; locked/ 0000 dir with a file (root)
//	names/     "caf\xe9", "line\nbreak", "with spaces", "-dash", 255-byte name,
//	           unicode, quotes, backslash, tab, a non-UTF-8 directory
//	emptydir/
//	deep/...   26 nested 200-byte names (> 5000 bytes) with leaf, hl-1 and hl-2 (one inode)
//
// All entries have explicit nanosecond mtimes and atimes (directory times are
// set last, deepest first); the top directory's own mode is left alone but
// its times are set too. Symlink atimes lie in 2100 (see ksSymAtimeBase).
//
// Neither cp nor rsync can handle deep/ (paths > PATH_MAX); rsync-based
// checks must remove it first. Non-root builds register EnsureRemovable.
func BuildKitchenSink(t testing.TB, dir string) []string {
	t.Helper()
	s := &sink{t: t, root: os.Geteuid() == 0, rnd: rand.NewChaCha8([32]byte([]byte("hlcp kitchen sink seed 000000001")))}
	top, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("BuildKitchenSink: open %s: %v", dir, err)
	}
	s.extraFd = append(s.extraFd, top)
	defer s.closeAll()
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Fatalf("BuildKitchenSink: %s must be an existing empty directory (err=%v, %d entries)", dir, err, len(ents))
	}

	s.buildFiles(top)
	s.buildLinks(top)
	s.buildSymlinks(top)
	s.buildSpecial(top)
	s.buildModes(top)
	s.buildOwners(top)
	s.buildXattrs(top)
	s.buildACLs(top)
	s.buildReadOnly(top, dir)
	s.buildNames(top)
	s.buildEmptyDir(top)
	s.buildDeep(top)

	s.finish(dir)
	return s.desc
}

// buildFiles creates files/: regular files of assorted sizes, the sparse file
// and the twin-a/twin-b pair.
func (s *sink) buildFiles(top int) {
	s.t.Helper()
	files := s.mkdir(top, "files", 0o755)
	for _, f := range []struct {
		name string
		size int
	}{{"empty", 0}, {"one-byte", 1}, {"size-4095", 4095}, {"size-4096", 4096}, {"big-1MiB+123", 1<<20 + 123}} {
		s.file(files, f.name, s.random(f.size), 0o644)
		s.say("files/%s: regular file, %d bytes", f.name, f.size)
	}
	s.sparse(files, "sparse")
	twin := s.random(333)
	s.file(files, "twin-a", twin, 0o640)
	s.file(files, "twin-b", twin, 0o640)
	s.times[len(s.times)-1].atime = s.times[len(s.times)-2].atime
	s.times[len(s.times)-1].mtime = s.times[len(s.times)-2].mtime
	s.say("files/twin-a, files/twin-b: two inodes with identical content and metadata (must stay two inodes)")
}

// buildLinks creates links/ and other/ with hard links within and across
// directories.
func (s *sink) buildLinks(top int) {
	s.t.Helper()
	links := s.mkdir(top, "links", 0o755)
	other := s.mkdir(top, "other", 0o755)
	s.file(links, "trio-1", s.random(1000), 0o644)
	s.link(links, "trio-1", links, "trio-2")
	s.link(links, "trio-1", other, "trio-3")
	s.say("links/trio-1, links/trio-2, other/trio-3: one inode, 3 links (same dir and across dirs)")
	s.file(links, "pair-1", s.random(2000), 0o600)
	s.link(links, "pair-1", other, "pair-2")
	s.say("links/pair-1, other/pair-2: one inode, 2 links across dirs")
}

// buildSymlinks creates sym/: assorted symlinks and a hard-linked symlink.
func (s *sink) buildSymlinks(top int) {
	s.t.Helper()
	sym := s.mkdir(top, "sym", 0o755)
	for _, l := range []struct{ name, target, what string }{
		{"relative", "../files/one-byte", "relative symlink"},
		{"absolute", "/etc/passwd", "absolute symlink"},
		{"dangling", "../no/such/file", "dangling symlink"},
		{"binary", "caf\xe9/\xff\xfe\x01-target", "symlink with non-UTF-8 target"},
		{"to-dir", "../links", "symlink to a directory (must not be followed)"},
		{"hardlinked", "../files/size-4096", "hard-linked symlink"},
	} {
		s.symlink(sym, l.name, l.target)
		s.say("sym/%s -> %q: %s", l.name, l.target, l.what)
	}
	s.link(sym, "hardlinked", sym, "hardlinked-2")
	s.say("sym/hardlinked-2: second name of the symlink inode sym/hardlinked (linkat without AT_SYMLINK_FOLLOW)")
}

// buildSpecial creates special/: a fifo, a socket node and (root only) device
// nodes.
func (s *sink) buildSpecial(top int) {
	s.t.Helper()
	special := s.mkdir(top, "special", 0o755)
	if err := s.mknod(special, "fifo", unix.S_IFIFO|0o644, 0); err != nil {
		s.fatal("mkfifo", err)
	}
	s.say("special/fifo: fifo 0644")
	if err := s.mknod(special, "socket", unix.S_IFSOCK|0o755, 0); err != nil {
		s.say("SKIPPED special/socket: %v", err)
	} else {
		s.say("special/socket: unix socket node 0755 (mknod S_IFSOCK)")
	}
	if !s.root {
		s.say("SKIPPED special/char-1-3, special/block-7-200: device nodes need root")
		return
	}
	for _, d := range []struct {
		name       string
		mode       uint32
		maj, min   uint32
		what       string
		permission uint32
	}{{"char-1-3", unix.S_IFCHR, 1, 3, "char device", 0o666}, {"block-7-200", unix.S_IFBLK, 7, 200, "block device", 0o660}} {
		if err := s.mknod(special, d.name, d.mode|d.permission, int(unix.Mkdev(d.maj, d.min))); err != nil {
			s.say("SKIPPED special/%s: %v", d.name, err)
			continue
		}
		s.say("special/%s: %s %d:%d", d.name, d.what, d.maj, d.min)
	}
}

// buildModes creates modes/: files with special permission bits and sticky /
// setgid directories.
func (s *sink) buildModes(top int) {
	s.t.Helper()
	modes := s.mkdir(top, "modes", 0o755)
	for _, m := range []struct {
		name string
		perm uint32
	}{{"setuid-4755", 0o4755}, {"setgid-2755", 0o2755}, {"setuid-setgid-6755", 0o6755}, {"private-0600", 0o600}, {"readonly-0444", 0o444}, {"exec-0711", 0o711}} {
		s.file(modes, m.name, []byte(m.name+"\n"), m.perm)
		s.say("modes/%s: file mode %04o", m.name, m.perm)
	}
	sticky := s.mkdir(modes, "sticky-1777", 0o1777)
	s.file(sticky, "inside", []byte("in sticky dir\n"), 0o666)
	sgid := s.mkdir(modes, "setgid-dir-2775", 0o2775)
	s.file(sgid, "inside", []byte("in setgid dir\n"), 0o664)
	s.say("modes/sticky-1777/, modes/setgid-dir-2775/: directories with sticky / setgid bits")
}

// buildOwners creates owners/ (root only): files, a directory and a symlink
// with foreign owners.
func (s *sink) buildOwners(top int) {
	s.t.Helper()
	if !s.root {
		s.say("SKIPPED owners/: chown needs root")
		return
	}
	owners := s.mkdir(top, "owners", 0o755)
	s.file(owners, "file-1234-5678", []byte("owned\n"), 0o644)
	s.chown(owners, "file-1234-5678", 1234, 5678, 0o644)
	s.file(owners, "setuid-1234", []byte("setuid owned\n"), 0o4750)
	s.chown(owners, "setuid-1234", 1234, 5678, 0o4750)
	s.file(owners, "group-only-0-5678", []byte("group\n"), 0o640)
	s.chown(owners, "group-only-0-5678", 0, 5678, 0o640)
	odir := s.mkdir(owners, "dir-1234-5678", 0o750)
	s.file(odir, "inside", []byte("inside owned dir\n"), 0o644)
	s.chown(odir, "inside", 4321, 8765, 0o644)
	s.chown(owners, "dir-1234-5678", 1234, 5678, -1)
	s.symlink(owners, "symlink-2345-6789", "file-1234-5678")
	s.chown(owners, "symlink-2345-6789", 2345, 6789, -1)
	s.say("owners/: files 1234:5678 and 0:5678, setuid file 04750 owned by 1234, dir 1234:5678 with a 4321:8765 file, symlink lchown'd to 2345:6789")
}

// buildXattrs creates xattrs/: user.* xattrs on a file and a directory and
// (root only) trusted.* and security.capability.
func (s *sink) buildXattrs(top int) {
	s.t.Helper()
	xdir := s.mkdir(top, "xattrs", 0o755)
	s.file(xdir, "file", []byte("file with xattrs\n"), 0o644)
	if s.xattr(xdir, "file", "xattrs/file", "user.hlcp.binary", []byte("\x00\x01\x02bin\xff\xfe\n")) {
		s.xattr(xdir, "file", "xattrs/file", "user.hlcp.empty", nil)
		s.xattr(xdir, "file", "xattrs/file", "user.hlcp.large", s.random(2000))
		s.say("xattrs/file: user.hlcp.binary (binary), user.hlcp.empty (empty), user.hlcp.large (2000 bytes)")
	}
	xsub := s.mkdir(xdir, "dir", 0o755)
	s.file(xsub, "plain", []byte("plain\n"), 0o644)
	if s.xattr(xdir, "dir", "xattrs/dir", "user.hlcp.dir", []byte("dir\x00value")) {
		s.say("xattrs/dir: directory with user.hlcp.dir")
	}
	if !s.root {
		s.say("SKIPPED trusted.* and security.capability xattrs: need root")
		return
	}
	if s.xattr(xdir, "file", "xattrs/file", "trusted.hlcp", []byte("trusted\x00\x7f")) {
		s.say("xattrs/file: trusted.hlcp")
	}
	s.file(xdir, "capability", []byte("#!/bin/true\n"), 0o755)
	// vfs_cap_data revision 2, effective, permitted = CAP_NET_BIND_SERVICE.
	capv := []byte{0x01, 0, 0, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if s.xattr(xdir, "capability", "xattrs/capability", "security.capability", capv) {
		s.say("xattrs/capability: security.capability cap_net_bind_service+ep (cleared by chown: restore after chown)")
	}
}

// buildACLs creates acl/: a file with an access ACL and a directory with a
// default ACL holding a file that inherited it.
func (s *sink) buildACLs(top int) {
	s.t.Helper()
	adir := s.mkdir(top, "acl", 0o755)
	s.file(adir, "file", []byte("file with an access ACL\n"), 0o660)
	access := EncodeACL([]ACLEntry{
		{Tag: ACLUserObj, Perm: 6}, {Tag: ACLUser, Perm: 6, ID: 1234}, {Tag: ACLGroupObj, Perm: 4},
		{Tag: ACLGroup, Perm: 4, ID: 5678}, {Tag: ACLMask, Perm: 6}, {Tag: ACLOther, Perm: 0},
	})
	if s.xattr(adir, "file", "acl/file", "system.posix_acl_access", access) {
		s.say("acl/file: access ACL user::rw- user:1234:rw- group::r-- group:5678:r-- mask::rw- other::--- (mode 0660)")
	}
	ddir := s.mkdir(adir, "dir", 0o750)
	def := EncodeACL([]ACLEntry{
		{Tag: ACLUserObj, Perm: 7}, {Tag: ACLUser, Perm: 5, ID: 1234}, {Tag: ACLGroupObj, Perm: 5},
		{Tag: ACLMask, Perm: 5}, {Tag: ACLOther, Perm: 0},
	})
	if s.xattr(adir, "dir", "acl/dir", "system.posix_acl_default", def) {
		s.say("acl/dir: default ACL user::rwx user:1234:r-x group::r-x mask::r-x other::---")
		s.file(ddir, "inherited", []byte("inherits the default ACL\n"), 0o640)
		s.say("acl/dir/inherited: file created after the default ACL (has an inherited access ACL)")
	}
}

// buildReadOnly creates ro/ (a 0555 directory) and, for root, locked/ (a 0000
// directory); non-root builds register EnsureRemovable on dir instead.
func (s *sink) buildReadOnly(top int, dir string) {
	s.t.Helper()
	ro := s.mkdir(top, "ro", 0o555)
	s.file(ro, "f1", []byte("in a read-only dir\n"), 0o644)
	s.file(ro, "f2", []byte("also in a read-only dir\n"), 0o444)
	s.say("ro/: directory 0555 with f1 and f2")
	if s.root {
		locked := s.mkdir(top, "locked", 0)
		s.file(locked, "secret", []byte("behind a 0000 dir\n"), 0o600)
		s.say("locked/: directory 0000 with secret")
	} else {
		s.say("SKIPPED locked/: a 0000 directory is only traversable by root")
		EnsureRemovable(s.t, dir)
	}
}

// buildNames creates names/: files with unusual names and a non-UTF-8
// directory.
func (s *sink) buildNames(top int) {
	s.t.Helper()
	names := s.mkdir(top, "names", 0o755)
	for _, n := range []string{"caf\xe9", "line\nbreak", "with spaces", "-dash-start", KitchenSinkLongName,
		"naïve-日本語-😀", " leading and trailing space ", "quote\"s and 'apostrophes'", "back\\slash", "tab\there", "..."} {
		s.file(names, n, []byte(n), 0o644)
		s.say("names/%q: %d-byte name", n, len(n))
	}
	bad := s.mkdir(names, "dir-\xff\xfe", 0o755)
	s.file(bad, "inside", []byte("inside a non-UTF-8 dir\n"), 0o644)
	s.say("names/\"dir-\\xff\\xfe\"/inside: non-UTF-8 directory name")
}

// buildEmptyDir creates emptydir/.
func (s *sink) buildEmptyDir(top int) {
	s.t.Helper()
	s.mkdir(top, "emptydir", 0o755)
	s.say("emptydir/: empty directory")
}

// buildDeep creates the deep/ chain (see KitchenSinkDeepDir) with leaf and
// the hard-link pair hl-1/hl-2 at its bottom.
func (s *sink) buildDeep(top int) {
	s.t.Helper()
	cur := s.mkdir(top, "deep", 0o755)
	for i := 0; i < KitchenSinkDeepDepth; i++ {
		cur = s.mkdir(cur, deepComponent(i), 0o755)
	}
	s.file(cur, "leaf", s.random(5000), 0o644)
	s.file(cur, "hl-1", []byte("hard link pair at the bottom of the deep chain\n"), 0o644)
	s.link(cur, "hl-1", cur, "hl-2")
	s.say("deep/<26 x 200-byte names>/{leaf,hl-1,hl-2}: %d-byte path, hl-1/hl-2 one inode", len(KitchenSinkDeepDir())+len("/leaf"))
}

// sparse creates a 64 MiB file with 4 KiB of data at 16 MiB and at 40 MiB.
func (s *sink) sparse(pfd int, name string) {
	s.t.Helper()
	fd, err := unix.Openat(pfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		s.fatal("create sparse", err)
	}
	defer unix.Close(fd)
	for _, off := range []int64{16 << 20, 40 << 20} {
		if _, err := unix.Pwrite(fd, s.random(4096), off); err != nil {
			s.fatal("write sparse", err)
		}
	}
	if err := unix.Ftruncate(fd, 64<<20); err != nil {
		s.fatal("truncate sparse", err)
	}
	if err := unix.Fchmod(fd, 0o644); err != nil {
		s.fatal("chmod sparse", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		s.fatal("stat sparse", err)
	}
	a, m := s.nextTimes(false)
	s.times = append(s.times, timedPath{pfd, name, a, m})
	s.say("files/sparse: 64 MiB apparent, data 4 KiB at 16 MiB and 40 MiB, %d KiB allocated", st.Blocks/2)
}

// finish applies times to non-directories, then modes and times to
// directories deepest first (reverse creation order), then to dir itself.
func (s *sink) finish(dir string) {
	s.t.Helper()
	ts := func(a, m int64) []unix.Timespec {
		return []unix.Timespec{unix.NsecToTimespec(a), unix.NsecToTimespec(m)}
	}
	for _, tp := range s.times {
		if err := unix.UtimesNanoAt(tp.dirfd, tp.name, ts(tp.atime, tp.mtime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			s.fatal("utimensat "+strconv.Quote(tp.name), err)
		}
	}
	for i := len(s.dirs) - 1; i >= 0; i-- {
		d := s.dirs[i]
		if err := unix.Fchmod(d.fd, d.perm); err != nil {
			s.fatal("chmod dir "+strconv.Quote(d.name), err)
		}
		if err := unix.UtimesNanoAt(d.dirfd, d.name, ts(d.atime, d.mtime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			s.fatal("utimensat dir "+strconv.Quote(d.name), err)
		}
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dir, ts(ksDirAtimeBase, ksDirMtimeBase), 0); err != nil {
		s.fatal("utimensat top dir", err)
	}
	s.say("times: explicit ns mtimes/atimes on every entry (symlink atimes in 2100 to survive readlink under relatime); directory times set last, deepest first")
}

func (s *sink) closeAll() {
	for _, d := range s.dirs {
		unix.Close(d.fd)
	}
	for _, fd := range s.extraFd {
		unix.Close(fd)
	}
	s.dirs, s.extraFd = nil, nil
}

// EnsureRemovable registers a t.Cleanup that adds u+rwx to every directory
// below dir (walking with directory fds, so any depth works), so that
// t.TempDir's removal succeeds for non-root users on trees containing
// read-only directories such as the kitchen sink's ro/ or copies of it.
// Register it after the t.TempDir call that created dir (cleanups run last
// registered first). It does nothing for root, who can remove anything.
func EnsureRemovable(t testing.TB, dir string) {
	if os.Geteuid() == 0 {
		return
	}
	t.Cleanup(func() {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		makeDirsWritable(fd)
	})
}

// makeDirsWritable chmods the subdirectories of the directory fd (which it
// closes) to u+rwx, recursively.
func makeDirsWritable(fd int) {
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	ents, _ := f.ReadDir(-1)
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(fd, e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			continue
		}
		_ = unix.Fchmodat(fd, e.Name(), (st.Mode&0o7777)|0o700, 0)
		if sub, err := unix.Openat(fd, e.Name(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
			makeDirsWritable(sub)
		}
	}
}
