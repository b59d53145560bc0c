// Package testutil holds test-support code for hlcp's end-to-end tests: tree
// builders (BuildKitchenSink, BuildSnapshots), loop-mounted scratch filesystems
// (MountImage), an rsync cross-check (RsyncItemize) and an independent oracle
// (Snapshot, Diff, CompareTrees) that decides whether a copy is exact.
//
// The oracle deliberately shares no code with hlcp and uses a different way of
// looking at a tree: it walks directory by directory with os.Root (one Root per
// directory, so paths longer than PATH_MAX work), lists entries with
// os.File.ReadDir, inspects them with Root.Lstat / Root.Readlink, hashes
// regular file contents with SHA-256 and reads extended attributes through
// /proc/self/fd/<dirfd>/<name>. It never follows symlinks.
package testutil

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// CompareOptions selects what Snapshot records and Diff compares beyond the
// always-compared basics (type, permission bits incl. setuid/setgid/sticky,
// size of regular files, mtime of every entry incl. directories, symlink
// targets, device numbers and the hard-link partition).
type CompareOptions struct {
	Owner bool // compare uid/gid
	Atime bool // compare atime (ns) of non-directories
	// NoSymlinkAtime leaves symlinks out of Atime: readlink moves a
	// symlink's atime, so a mirror kept by sync does not chase it.
	NoSymlinkAtime bool
	Xattrs         bool // compare all xattrs incl. system.posix_acl_access / _default (raw bytes), security.*, trusted.*, user.*
	Content        bool // compare content (sha256) of regular files
	IgnoreRootMeta bool // skip metadata comparison of the top directory itself
}

// FullCompare returns options that compare everything hlcp must preserve.
func FullCompare() CompareOptions {
	return CompareOptions{Owner: true, Atime: true, Xattrs: true, Content: true}
}

// Entry describes one path of a Tree.
type Entry struct {
	Path   string // slash-separated path relative to the tree root; "." is the root
	Mode   uint32 // full st_mode: S_IFMT type bits | setuid/setgid/sticky | permissions
	Uid    uint32
	Gid    uint32
	Size   int64
	Blocks int64 // st_blocks (512-byte units); recorded, never compared
	Mtime  int64 // ns since the epoch
	Atime  int64 // ns since the epoch (recorded before anything is read)
	Rdev   uint64
	Nlink  uint64 // recorded, never compared (links may point outside the tree)
	Dev    uint64
	Ino    uint64
	Target string            // symlink target, raw bytes
	Xattrs map[string]string // name -> raw value; nil unless CompareOptions.Xattrs
	SHA256 string            // hex digest of a regular file's content; "" unless CompareOptions.Content
}

// Type returns the S_IFMT bits of the entry's mode.
func (e *Entry) Type() uint32 { return e.Mode & unix.S_IFMT }

// IsDir reports whether the entry is a directory.
func (e *Entry) IsDir() bool { return e.Type() == unix.S_IFDIR }

// Tree is the result of Snapshot.
type Tree struct {
	Root    string
	Opts    CompareOptions
	Entries map[string]*Entry // keyed by Entry.Path
}

// Paths returns all paths of the tree, sorted bytewise ("." first).
func (t *Tree) Paths() []string {
	ps := make([]string, 0, len(t.Entries))
	for p := range t.Entries {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// Get returns the entry for a relative path ("" and "." both mean the root),
// or nil.
func (t *Tree) Get(p string) *Entry {
	if p == "" {
		p = "."
	}
	return t.Entries[p]
}

// Inodes returns the number of distinct (dev, ino) pairs in the tree.
func (t *Tree) Inodes() int {
	seen := make(map[devIno]struct{}, len(t.Entries))
	for _, e := range t.Entries {
		seen[devIno{e.Dev, e.Ino}] = struct{}{}
	}
	return len(seen)
}

type devIno struct{ dev, ino uint64 }

// Snapshot walks root and returns a description of every path below it
// (relative paths, "." for the root itself), holding for each: type, mode,
// uid, gid, size, mtime/atime ns, rdev, symlink target (raw bytes), xattrs
// (when opts.Xattrs), sha256 of regular file content (when opts.Content) and
// (dev, ino) so that the link partition can be computed.
//
// Snapshot never opens a full path: it opens one os.Root per directory, so
// trees deeper than PATH_MAX work. Regular files are read with O_NOATIME so
// that taking a snapshot does not disturb atimes; readlink(2) however always
// touches a symlink's atime (subject to the relatime rules), which is why each
// entry's metadata is recorded before its content or target is read.
func Snapshot(root string, opts CompareOptions) (*Tree, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	t := &Tree{Root: root, Opts: opts, Entries: make(map[string]*Entry)}
	w := walker{t: t, opts: opts, buf: make([]byte, 256<<10), seen: make(map[devIno]*Entry)}

	fi, err := r.Lstat(".")
	if err != nil {
		return nil, err
	}
	d, err := r.Open(".")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	e := entryFromInfo(".", fi)
	if opts.Xattrs {
		fd := int(d.Fd())
		e.Xattrs, err = readXattrs(func(dst []byte) (int, error) { return unix.Flistxattr(fd, dst) },
			func(name string, dst []byte) (int, error) { return unix.Fgetxattr(fd, name, dst) })
		if err != nil {
			return nil, fmt.Errorf("xattrs of %s: %w", root, err)
		}
	}
	t.Entries["."] = e
	if err := w.walkDir(r, d, ""); err != nil {
		return nil, err
	}
	return t, nil
}

type walker struct {
	t    *Tree
	opts CompareOptions
	buf  []byte
	seen map[devIno]*Entry // first entry of each multiply-linked inode
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// walkDir records every entry of the directory open as r (and as the File d)
// whose relative path is rel ("" for the root) and descends into
// subdirectories.
func (w *walker) walkDir(r *os.Root, d *os.File, rel string) error {
	ents, err := d.ReadDir(-1)
	if err != nil {
		return fmt.Errorf("readdir %s: %w", showPath(relOrDot(rel)), err)
	}
	dirfd := int(d.Fd())
	procDir := "/proc/self/fd/" + strconv.Itoa(dirfd) + "/"
	for _, de := range ents {
		name := de.Name()
		p := joinRel(rel, name)
		// A File opened through a Root lstats every entry in ReadDir
		// (fstatat relative to the directory fd, never following
		// symlinks), so Info is that lstat result.
		fi, err := de.Info()
		if err != nil {
			fi, err = r.Lstat(name)
		}
		if err != nil {
			return fmt.Errorf("lstat %s: %w", showPath(p), err)
		}
		e := entryFromInfo(p, fi)
		if !e.IsDir() && e.Nlink > 1 {
			// Xattrs, content and target belong to the inode: read them
			// once per hard-link group.
			k := devIno{e.Dev, e.Ino}
			if first, ok := w.seen[k]; ok {
				e.Xattrs, e.SHA256, e.Target = first.Xattrs, first.SHA256, first.Target
				w.t.Entries[p] = e
				continue
			}
			w.seen[k] = e
		}
		if w.opts.Xattrs {
			lp := procDir + name
			e.Xattrs, err = readXattrs(func(dst []byte) (int, error) { return unix.Llistxattr(lp, dst) },
				func(xn string, dst []byte) (int, error) { return unix.Lgetxattr(lp, xn, dst) })
			if err != nil {
				return fmt.Errorf("xattrs of %s: %w", showPath(p), err)
			}
		}
		switch e.Type() {
		case unix.S_IFLNK:
			e.Target, err = r.Readlink(name)
			if err != nil {
				return fmt.Errorf("readlink %s: %w", showPath(p), err)
			}
		case unix.S_IFREG:
			if w.opts.Content {
				e.SHA256, err = w.hashFile(r, name)
				if err != nil {
					return fmt.Errorf("hash %s: %w", showPath(p), err)
				}
			}
		}
		w.t.Entries[p] = e
		if e.IsDir() {
			if err := w.descend(r, name, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *walker) descend(parent *os.Root, name, rel string) error {
	sub, err := parent.OpenRoot(name)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", showPath(rel), err)
	}
	defer sub.Close()
	d, err := sub.Open(".")
	if err != nil {
		return fmt.Errorf("open dir %s: %w", showPath(rel), err)
	}
	defer d.Close()
	return w.walkDir(sub, d, rel)
}

func (w *walker) hashFile(r *os.Root, name string) (string, error) {
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NOATIME, 0)
	if errors.Is(err, syscall.EPERM) {
		// O_NOATIME needs ownership or CAP_FOWNER.
		f, err = r.OpenFile(name, os.O_RDONLY, 0)
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, onlyReader{f}, w.buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// onlyReader hides File.WriterTo so that io.CopyBuffer uses our buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func relOrDot(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

func entryFromInfo(p string, fi fs.FileInfo) *Entry {
	st := fi.Sys().(*syscall.Stat_t)
	return &Entry{
		Path:   p,
		Mode:   st.Mode,
		Uid:    st.Uid,
		Gid:    st.Gid,
		Size:   st.Size,
		Blocks: st.Blocks,
		Mtime:  st.Mtim.Sec*1e9 + st.Mtim.Nsec,
		Atime:  st.Atim.Sec*1e9 + st.Atim.Nsec,
		Rdev:   st.Rdev,
		Nlink:  uint64(st.Nlink),
		Dev:    st.Dev,
		Ino:    st.Ino,
	}
}

// ignoredXattrs are left out of snapshots: XFS lists its on-disk form of
// POSIX ACLs as trusted.SGI_ACL_FILE / trusted.SGI_ACL_DEFAULT (visible to
// root) next to system.posix_acl_access / _default, so they are mere aliases
// that exist only on XFS and would make every copy between XFS and another
// filesystem differ. The ACLs themselves are compared as system.posix_acl_*.
var ignoredXattrs = map[string]bool{
	"trusted.SGI_ACL_FILE":    true,
	"trusted.SGI_ACL_DEFAULT": true,
}

// readXattrs lists and reads all extended attributes through the given
// list/get functions. Filesystems without xattr support yield an empty map.
func readXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) (map[string]string, error) {
	m := map[string]string{}
	var names []byte
	for {
		n, err := list(nil)
		if err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
				return m, nil
			}
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		if n == 0 {
			return m, nil
		}
		names = make([]byte, n)
		n, err = list(names)
		if errors.Is(err, unix.ERANGE) {
			continue // grew meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		names = names[:n]
		break
	}
	for _, name := range strings.Split(string(names), "\x00") {
		if name == "" || ignoredXattrs[name] {
			continue
		}
		for {
			n, err := get(name, nil)
			if errors.Is(err, unix.ENODATA) {
				break // removed meanwhile
			}
			if err != nil {
				return nil, fmt.Errorf("getxattr %s: %w", name, err)
			}
			val := make([]byte, n)
			n, err = get(name, val)
			if errors.Is(err, unix.ERANGE) {
				continue
			}
			if errors.Is(err, unix.ENODATA) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("getxattr %s: %w", name, err)
			}
			m[name] = string(val[:n])
			break
		}
	}
	return m, nil
}

// showPath renders a relative path for a difference message: printable
// UTF-8 without leading/trailing space is shown as is, anything else
// (newlines, invalid UTF-8, ...) as a Go quoted string.
func showPath(p string) string {
	if p == "" {
		return "."
	}
	if !utf8.ValidString(p) || strings.HasPrefix(p, " ") || strings.HasSuffix(p, " ") || strings.HasPrefix(p, `"`) {
		return strconv.Quote(p)
	}
	for _, r := range p {
		if !unicode.IsPrint(r) {
			return strconv.Quote(p)
		}
	}
	return p
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "char device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("type 0%o", mode&unix.S_IFMT)
}

func fmtNs(ns int64) string {
	sec, nsec := ns/1e9, ns%1e9
	if nsec < 0 {
		sec--
		nsec += 1e9
	}
	return fmt.Sprintf("%d.%09d", sec, nsec)
}

func fmtDev(d uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(d), unix.Minor(d))
}

func shortVal(v string) string {
	const max = 48
	if len(v) > max {
		return strconv.Quote(v[:max]) + fmt.Sprintf("...(%d bytes)", len(v))
	}
	return strconv.Quote(v)
}

// Diff compares two snapshots and returns human-readable differences, one
// string per difference, sorted. An empty result means identical. Formats:
//
//	only in src: P
//	only in dst: P
//	type P: regular file vs symlink
//	mode P: 0100644 vs 0100600
//	owner P: 0:0 vs 1234:5678
//	size P: 10 vs 11
//	content P: sha256 <12 hex> vs <12 hex>
//	mtime P: 1600000000.123456789 vs 1600000000.123456790
//	atime P: ...
//	rdev P: 1:3 vs 1:5
//	target P: "a" vs "b"
//	xattr P: NAME only in src | NAME only in dst | NAME differs: "v1" vs "v2"
//	links: src groups {a,b} but dst splits it: {a} {b}
//	links: dst groups {a,b} but src splits it: {a} {b}
//
// Content and Xattrs can only be compared if both snapshots were taken with
// them (otherwise an "options: ..." difference is reported).
//
// The link partition compares which non-directory paths share an inode
// (keyed by (dev, ino)): two paths share an inode in src iff they share one
// in dst. Paths present on one side only are left out of that comparison.
// st_nlink, ctime, directory sizes and st_blocks are never compared.
func Diff(src, dst *Tree, opts CompareOptions) []string {
	out := []string{}
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	// Comparing data a snapshot did not record would silently pass.
	if opts.Content && !(src.Opts.Content && dst.Opts.Content) {
		add("options: Content compared but a snapshot was taken without it")
	}
	if opts.Xattrs && !(src.Opts.Xattrs && dst.Opts.Xattrs) {
		add("options: Xattrs compared but a snapshot was taken without it")
	}

	for _, p := range src.Paths() {
		if _, ok := dst.Entries[p]; !ok {
			add("only in src: %s", showPath(p))
		}
	}
	for _, p := range dst.Paths() {
		s, ok := src.Entries[p]
		if !ok {
			add("only in dst: %s", showPath(p))
			continue
		}
		d := dst.Entries[p]
		if p == "." && opts.IgnoreRootMeta {
			continue
		}
		sp := showPath(p)
		if s.Type() != d.Type() {
			add("type %s: %s vs %s", sp, typeName(s.Mode), typeName(d.Mode))
			continue
		}
		if s.Mode != d.Mode {
			add("mode %s: 0%o vs 0%o", sp, s.Mode, d.Mode)
		}
		if opts.Owner && (s.Uid != d.Uid || s.Gid != d.Gid) {
			add("owner %s: %d:%d vs %d:%d", sp, s.Uid, s.Gid, d.Uid, d.Gid)
		}
		switch s.Type() {
		case unix.S_IFREG:
			if s.Size != d.Size {
				add("size %s: %d vs %d", sp, s.Size, d.Size)
			}
			if opts.Content && s.SHA256 != d.SHA256 {
				add("content %s: sha256 %.12s vs %.12s", sp, s.SHA256, d.SHA256)
			}
		case unix.S_IFLNK:
			if s.Target != d.Target {
				add("target %s: %q vs %q", sp, s.Target, d.Target)
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			if s.Rdev != d.Rdev {
				add("rdev %s: %s vs %s", sp, fmtDev(s.Rdev), fmtDev(d.Rdev))
			}
		}
		if s.Mtime != d.Mtime {
			add("mtime %s: %s vs %s", sp, fmtNs(s.Mtime), fmtNs(d.Mtime))
		}
		if opts.Atime && !s.IsDir() && !(opts.NoSymlinkAtime && s.Type() == unix.S_IFLNK) && s.Atime != d.Atime {
			add("atime %s: %s vs %s", sp, fmtNs(s.Atime), fmtNs(d.Atime))
		}
		if opts.Xattrs {
			diffXattrs(sp, s.Xattrs, d.Xattrs, add)
		}
	}
	out = append(out, diffLinks(src, dst)...)
	sort.Strings(out)
	return out
}

func diffXattrs(sp string, s, d map[string]string, add func(string, ...any)) {
	names := make([]string, 0, len(s)+len(d))
	for n := range s {
		names = append(names, n)
	}
	for n := range d {
		if _, ok := s[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		sv, sok := s[n]
		dv, dok := d[n]
		switch {
		case !dok:
			add("xattr %s: %s only in src", sp, n)
		case !sok:
			add("xattr %s: %s only in dst", sp, n)
		case sv != dv:
			add("xattr %s: %s differs: %s vs %s", sp, n, shortVal(sv), shortVal(dv))
		}
	}
}

// linkGroups returns, for every non-directory path, the list of paths that
// share its inode (the same slice for all members, sorted).
func linkGroups(t *Tree) map[devIno][]string {
	g := make(map[devIno][]string)
	for p, e := range t.Entries {
		if e.IsDir() {
			continue
		}
		k := devIno{e.Dev, e.Ino}
		g[k] = append(g[k], p)
	}
	for _, ps := range g {
		sort.Strings(ps)
	}
	return g
}

func fmtGroup(ps []string) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = showPath(p)
	}
	return "{" + strings.Join(s, ",") + "}"
}

func diffLinks(src, dst *Tree) []string {
	var out []string
	check := func(a, b *Tree, aName, bName string) {
		for _, ps := range linkGroups(a) {
			if len(ps) < 2 {
				continue
			}
			// Partition the members present in b by b's inodes.
			var order []devIno
			parts := map[devIno][]string{}
			var present []string
			for _, p := range ps {
				e := b.Entries[p]
				if e == nil || e.IsDir() {
					continue
				}
				present = append(present, p)
				k := devIno{e.Dev, e.Ino}
				if _, ok := parts[k]; !ok {
					order = append(order, k)
				}
				parts[k] = append(parts[k], p)
			}
			if len(order) < 2 {
				continue
			}
			sub := make([]string, len(order))
			for i, k := range order {
				sub[i] = fmtGroup(parts[k])
			}
			sort.Strings(sub)
			out = append(out, fmt.Sprintf("links: %s groups %s but %s splits it: %s",
				aName, fmtGroup(present), bName, strings.Join(sub, " ")))
		}
	}
	check(src, dst, "src", "dst")
	check(dst, src, "dst", "src")
	return out
}

// CompareTrees snapshots src and dst and diffs them; on any difference it
// calls t.Errorf with up to 50 differences and the total count. Errors while
// walking are fatal.
func CompareTrees(t testing.TB, src, dst string, opts CompareOptions) {
	t.Helper()
	s, err := Snapshot(src, opts)
	if err != nil {
		t.Fatalf("snapshot of source %s: %v", src, err)
	}
	d, err := Snapshot(dst, opts)
	if err != nil {
		t.Fatalf("snapshot of copy %s: %v", dst, err)
	}
	diffs := Diff(s, d, opts)
	if len(diffs) == 0 {
		return
	}
	shown := diffs
	if len(shown) > 50 {
		shown = shown[:50]
	}
	more := ""
	if len(diffs) > len(shown) {
		more = fmt.Sprintf("\n  ... and %d more", len(diffs)-len(shown))
	}
	t.Errorf("copy %s differs from source %s: %d difference(s) (src vs dst):\n  %s%s",
		dst, src, len(diffs), strings.Join(shown, "\n  "), more)
}
