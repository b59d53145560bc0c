package mirror

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/msg"
	"hlcp/internal/progress"
)

// makeDirs makes the directories DST lacks, parents first (path order),
// owner-writable for now: their metadata comes at the end (finishDirs). A
// path where DST has another type of file is first renamed aside, and the
// aside name deleted with the paths only DST has.
func (m *Mirror) makeDirs(c *collector) error {
	return eachPathRecord(c.mkdirs, func(kind byte, path []byte) error {
		if m.o.DryRun {
			m.o.Action("mkdir", dirName(path), "")
			m.st.DirsMade++
			return nil
		}
		pfd, name, err := m.dsts.parent(path)
		if err != nil {
			m.failErr(string(path), fmt.Errorf("open parent directory: %w", err))
			return nil
		}
		if kind == kindReplace {
			if err := m.replaceWithDir(pfd, name, path); err != nil {
				return m.fatalOr(path, err)
			}
			m.st.DirsMade++
			return m.touched(path)
		}
		err = m.writable(pfd, path, func() error { return unix.Mkdirat(pfd, name, 0o700) })
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return m.fatalOr(path, fmt.Errorf("mkdir: %w", err))
		}
		m.st.DirsMade++
		return m.touched(path)
	})
}

// replaceWithDir puts a new directory at path, where DST has another type
// of file: made at a temporary name, then exchanged with the old entry in
// one rename (RENAME_EXCHANGE), so that path is never missing; the old
// entry, now at the temporary name, is deleted at the end. Where the
// filesystem cannot exchange, the old entry is renamed aside first.
func (m *Mirror) replaceWithDir(pfd int, name string, path []byte) error {
	tmp := m.tmpName()
	if err := m.writable(pfd, path, func() error { return unix.Mkdirat(pfd, tmp, 0o700) }); err != nil {
		return fmt.Errorf("mkdir: %w", err)
	}
	swapped, err := m.exchange(pfd, tmp, name, path)
	if err == nil || swapped {
		return err
	}
	unix.Unlinkat(pfd, tmp, unix.AT_REMOVEDIR)
	if !cannotExchange(err) {
		return err
	}
	if err := m.setAside(pfd, name, path); err != nil {
		return err
	}
	if err := unix.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkdir: %w", err)
	}
	return nil
}

// exchange swaps the entries tmp and name of pfd (path), and records
// tmp, which now holds the old entry of path, for deletion at the end. A
// path that is gone meanwhile just gets tmp's entry. swapped: tmp's entry
// is at path now (even if err is not nil).
func (m *Mirror) exchange(pfd int, tmp, name string, path []byte) (swapped bool, err error) {
	err = unix.Renameat2(pfd, tmp, pfd, name, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.ENOENT) {
		err = unix.Renameat2(pfd, tmp, pfd, name, unix.RENAME_NOREPLACE)
		return err == nil, err
	}
	if err != nil {
		return false, fmt.Errorf("replace: %w", err)
	}
	m.dsts.forget(string(path))
	dir, _ := split(path)
	return true, m.trash(dir, tmp)
}

// cannotExchange tells the errors of a filesystem without RENAME_EXCHANGE.
func cannotExchange(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)
}

// setAside renames the entry name of pfd (path) out of the way, to a name
// that is deleted at the end with the paths only DST has.
func (m *Mirror) setAside(pfd int, name string, path []byte) error {
	aside := m.tmpName()
	err := m.writable(pfd, path, func() error { return unix.Renameat2(pfd, name, pfd, aside, unix.RENAME_NOREPLACE) })
	if err != nil {
		return fmt.Errorf("set aside: %w", err)
	}
	m.dsts.forget(string(path))
	dir, _ := split(path)
	return m.trash(dir, aside)
}

// writable runs op, a change in directory pfd (the one of path), and
// where the directory's mode forbids it (a read-only directory, for a user
// who owns it: root is not refused) makes the directory writable for its
// owner and runs op again. The directory is recorded as touched: it gets
// the source's mode back at the end (finishDirs).
func (m *Mirror) writable(pfd int, path []byte, op func() error) error {
	err := op()
	if !errors.Is(err, unix.EACCES) {
		return err
	}
	fd, oerr := unix.Openat(pfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if oerr != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Uid != uint32(unix.Geteuid()) || st.Mode&0o700 == 0o700 {
		return err
	}
	if unix.Fchmod(fd, st.Mode&0o7777|0o700) != nil {
		return err
	}
	if terr := m.touched(path); terr != nil {
		return terr
	}
	return op()
}

// fatalOr stops the run on an error that stops every further change (a
// full or read-only destination), and reports any other against path.
func (m *Mirror) fatalOr(path []byte, err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EROFS) {
		return fmt.Errorf("%s: %w", quote(path), err)
	}
	m.failErr(string(path), err)
	return nil
}

// applier is the apply pass's visitor: for each source inode with a
// decision, it brings every path to the kept inode, or to a new copy.
type applier struct {
	m      *Mirror
	dr     *recReader
	d      decision
	dok    bool
	dbuf   []byte
	active bool // the current source inode has a decision
	src    inode
	typ    uint8
	// the inode every path is to be: a path of DST that has it
	keep    []byte
	keepIno inode
	// want is the inode at keep (the kept one, a reused one or the new
	// copy): every link to keep is checked to be it
	want inode
	// tmpKeep: the temporary names of the new copies (and of a reused
	// inode) that keep was, each after its length (a held name starts
	// with a NUL), removed at the end: a group
	// split by EMLINK has one per copy
	tmpKeep  []byte
	failed   bool   // the source inode could not be copied: its paths are left
	copied   bool   // (dry run) the source inode is to be copied
	srcFirst []byte // a path of the source inode in SRC
	fullCopy inode  // a copy of the source kept beside a full kept inode
}

func (a *applier) nextDecision() error {
	b, err := a.dr.next()
	if err == io.EOF {
		a.dok = false
		return nil
	}
	if err != nil {
		return err
	}
	a.dbuf = append(a.dbuf[:0], b...)
	a.d, err = decodeDecision(a.dbuf)
	a.dok = err == nil
	return err
}

func (a *applier) begin(src inode, typ uint8) error {
	a.src, a.typ, a.active, a.failed, a.copied = src, typ, false, false, false
	a.keep, a.tmpKeep, a.keepIno, a.fullCopy, a.want = a.keep[:0], a.tmpKeep[:0], inode{}, inode{}, inode{}
	for a.dok && less(a.d.src, src) {
		if err := a.nextDecision(); err != nil {
			return fmt.Errorf("decisions: %w", err)
		}
	}
	if a.dok && a.d.src == src {
		a.active = true
		a.srcFirst = append(a.srcFirst[:0], a.d.first...)
		if a.d.keep != (inode{}) {
			a.keep, a.keepIno, a.want = append(a.keep, a.d.keepPath...), a.d.keep, a.d.keep
		}
	}
	return nil
}

func (a *applier) at(path []byte, dst inode, absent bool, flags uint8) error {
	if !a.active || a.failed {
		return nil
	}
	if !absent && dst == a.keepIno && a.keepIno != (inode{}) {
		return nil // already the kept inode
	}
	// A copy of the source that the kept inode cannot take more links
	// from (below): its paths stay.
	if !absent && dst == a.fullCopy && a.fullCopy != (inode{}) {
		a.m.st.Kept++
		return nil
	}
	if !absent && flags&(flagContent|flagJoined) == 0 {
		return a.place(path, absent, dst, flags)
	}
	return a.place(path, absent, inode{}, 0)
}

func (a *applier) occupied(path []byte) error {
	if !a.active || a.failed {
		return nil
	}
	return a.place(path, false, inode{}, 0)
}

// place makes path (absent: DST lacks it; else it has another inode, or
// another type) a link to the kept inode, making the kept inode first
// when there is none yet. copyAt, when not zero, is the inode at path, a
// copy of the source (with flags): where the kept inode can take no more
// links (EMLINK, or a DST without hard links), path keeps it, and so do
// its other paths: a link group split by the limit is not split again on
// every run.
func (a *applier) place(path []byte, absent bool, copyAt inode, flags uint8) error {
	m := a.m
	made := false // the copy (or reuse) made for this path is its one action
	if len(a.keep) == 0 {
		if err := a.makeKeep(path); err != nil || a.failed {
			return err
		}
		made = true
	}
	code := "link"
	if !absent {
		code = "relink"
	}
	if m.o.DryRun {
		if !made {
			m.o.Action(code, string(path), "")
			m.count(code)
		}
		return nil
	}
	err := m.linkInto(a.keep, path, absent, a.want)
	if (errors.Is(err, unix.EMLINK) || noLinks(err)) && copyAt != (inode{}) {
		a.fullCopy = copyAt
		m.st.Kept++
		if flags&flagMeta != 0 {
			if err := m.fixMeta(a.srcFirst, path, a.src, copyAt); err != nil {
				m.failErr(string(path), err)
			}
			m.st.MetaFixed++
		}
		return nil
	}
	if errors.Is(err, unix.EMLINK) || noLinks(err) {
		// The kept inode is full (or DST has no hard links): this path
		// gets a copy of its own, which the next paths link to.
		a.keep, a.keepIno, a.want = a.keep[:0], inode{}, inode{}
		if err := a.makeKeep(path); err != nil || a.failed {
			return err
		}
		err = m.linkInto(a.keep, path, absent, a.want)
	}
	if err != nil {
		return m.fatalOr(path, fmt.Errorf("%s: %w", code, err))
	}
	if !made {
		m.count(code)
	}
	return m.touched(path)
}

func noLinks(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)
}

// makeKeep gives the source inode a DST inode: a path only DST has that is
// a copy of it (a rename), or a new copy at a temporary name in the
// directory of path.
func (a *applier) makeKeep(path []byte) error {
	m := a.m
	if len(a.d.reuse) > 0 {
		// A copy of the source that DST holds, linked to a temporary
		// name (holdReuse): it gets the source's metadata, and its
		// temporary name goes at the end.
		a.keep = append(a.keep[:0], a.d.reuse...)
		a.d.reuse = nil // once
		m.st.Renamed++
		if m.o.DryRun {
			m.o.Action("link", string(path), "from "+msg.Quote(string(a.keep)))
			return nil
		}
		a.tmpKeep = append(binary.AppendUvarint(a.tmpKeep, uint64(len(a.keep))), a.keep...)
		var st unix.Stat_t
		if !m.lstatDst(a.keep, &st) {
			a.failed = true
			m.fail(string(path), "the inode held for reuse is gone")
			return nil
		}
		a.want = inode{st.Dev, st.Ino}
		if err := m.fixMeta(a.srcFirst, a.keep, a.src, a.want); err != nil {
			m.failErr(string(path), err)
		}
		return nil
	}
	dir, _ := split(path)
	tmp := m.tmpName()
	keep := []byte(tmp)
	if dir != "" {
		keep = []byte(dir + "/" + tmp)
	}
	if m.o.DryRun {
		detail := ""
		var st unix.Stat_t
		if m.lstat(m.srcs, a.srcFirst, &st) && st.Mode&unix.S_IFMT == unix.S_IFREG {
			m.st.Bytes += st.Size
			detail = progress.Bytes(st.Size)
		}
		m.o.Action("copy", string(path), detail)
		m.st.Copied++
		a.keep, a.copied = keep, true
		return nil
	}
	spfd, sname, err := m.srcs.parent(a.srcFirst)
	if err == nil {
		var dpfd int
		if dpfd, err = m.dsts.get(dir); err == nil {
			var st unix.Stat_t
			err = m.writable(dpfd, path, func() (err error) {
				st, _, err = m.maker.Make(spfd, sname, a.src.dev, a.src.ino, a.typOf(spfd, sname), dpfd, tmp, string(path))
				return err
			})
			if err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
				m.st.Bytes += st.Size
			}
			if err == nil {
				var nst unix.Stat_t
				if err = unix.Fstatat(dpfd, tmp, &nst, unix.AT_SYMLINK_NOFOLLOW); err == nil {
					a.want = inode{nst.Dev, nst.Ino}
				}
			}
		}
	}
	if err != nil {
		a.failed = true
		return m.fatalOr(path, err)
	}
	m.st.Copied++
	a.keep, a.tmpKeep = keep, append(binary.AppendUvarint(a.tmpKeep, uint64(len(keep))), keep...)
	return m.touched(path)
}

// typOf is the source inode's type, read in SRC when the groups did not
// say it (a source inode all of whose paths DST has as another type).
func (a *applier) typOf(spfd int, name string) uint8 {
	if a.typ != 0 {
		return a.typ
	}
	var st unix.Stat_t
	if unix.Fstatat(spfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		a.typ = fsx.TypeOfMode(st.Mode)
	}
	return a.typ
}

func (a *applier) end() error {
	m := a.m
	if !a.active {
		return nil
	}
	if a.d.metaFix && len(a.keep) > 0 && a.keepIno == a.d.keep {
		if m.o.DryRun {
			m.o.Action("meta", string(a.keep), "")
		} else if err := m.fixMeta(a.srcFirst, a.keep, a.src, a.keepIno); err != nil {
			m.failErr(string(a.keep), err)
		}
		m.st.MetaFixed++
	}
	for rest := a.tmpKeep; len(rest) > 0 && !m.o.DryRun; {
		// Every path links to a new copy now: their temporary names go.
		n, k := binary.Uvarint(rest)
		name := rest[k : k+int(n)]
		if pfd, name, err := m.dstEntry(name); err == nil {
			unix.Unlinkat(pfd, name, 0)
		}
		rest = rest[k+int(n):]
	}
	return nil
}

// count adds one action to the summary's counts.
func (m *Mirror) count(code string) {
	switch code {
	case "link":
		m.st.Linked++
	case "relink":
		m.st.Relinked++
	}
}

// linkInto makes path a link to the inode at keep: directly when DST lacks
// path, else through a temporary name renamed over it (so that path always
// has its old version or its new one). A directory where the link goes is
// set aside first.
//
// Every link is checked to be want before it is renamed over path or left
// in place: a user who owns the directory of keep could have put another
// inode there since the scan (or the copy), which must not become a file
// of another's path. A link that is not want is removed.
func (m *Mirror) linkInto(keep, path []byte, absent bool, want inode) error {
	kfd, kname, err := m.dstEntry(keep)
	if err != nil {
		return err
	}
	if !isHeld(keep) {
		// Reaching path's directory may open directories and close the
		// least recently used, which may be keep's: a copy of the fd.
		if kfd, err = unix.FcntlInt(uintptr(kfd), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			return err
		}
		defer unix.Close(kfd)
	}
	pfd, name, err := m.dsts.parent(path)
	if err != nil {
		return err
	}
	if absent {
		err := m.writable(pfd, path, func() error { return unix.Linkat(kfd, kname, pfd, name, 0) })
		if err == nil {
			return checkLinked(pfd, name, want)
		}
		if !errors.Is(err, unix.EEXIST) {
			return err
		}
	}
	tmp := m.tmpName()
	if err := m.writable(pfd, path, func() error { return unix.Linkat(kfd, kname, pfd, tmp, 0) }); err != nil {
		return err
	}
	if err := checkLinked(pfd, tmp, want); err != nil {
		return err
	}
	var st unix.Stat_t
	if unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		// A directory cannot be renamed over: exchanged instead, then
		// deleted at the end (or, where the filesystem cannot exchange,
		// renamed aside first).
		swapped, err := m.exchange(pfd, tmp, name, path)
		if err == nil || swapped || !cannotExchange(err) {
			if err != nil && !swapped {
				unix.Unlinkat(pfd, tmp, 0)
			}
			return err
		}
		if err := m.setAside(pfd, name, path); err != nil {
			unix.Unlinkat(pfd, tmp, 0)
			return err
		}
	}
	if err := unix.Renameat(pfd, tmp, pfd, name); err != nil {
		unix.Unlinkat(pfd, tmp, 0)
		return err
	}
	return nil
}

// errNotKept is a link to keep that found another inode there.
var errNotKept = errors.New("the inode to link to was replaced since the scan (by the owner of its directory?): not linked")

// checkLinked checks that name, just linked in pfd, is the inode want; if
// not, it unlinks it (a name the caller made).
func checkLinked(pfd int, name string, want inode) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if (inode{st.Dev, st.Ino}) != want {
		unix.Unlinkat(pfd, name, 0)
		return errNotKept
	}
	return nil
}

func dirOf(path []byte) string {
	d, _ := split(path)
	return d
}

// apply is the third pass: every source inode with a decision gets its
// paths linked to the kept inode, or to a new copy of it.
func (m *Mirror) apply(c *collector) error {
	ctr := m.o.Progress.Phase("apply", "inodes", "paths")
	defer m.o.Progress.End()
	w, err := m.groupWalker(c)
	if err != nil {
		return err
	}
	dr, err := c.decisions.reader()
	if err != nil {
		return err
	}
	a := &applier{m: m, dr: dr}
	if err := a.nextDecision(); err != nil {
		return err
	}
	if err := w.walk(countingVisitor{a, &ctr.Done}); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	return nil
}

// fixMeta gives DST's inode at path the metadata of the source inode at
// srcPath (owner, mode, xattrs and ACLs, times), in place.
func (m *Mirror) fixMeta(srcPath, path []byte, src, want inode) error {
	spfd, sname, err := m.srcs.parent(srcPath)
	if err != nil {
		return err
	}
	dpfd, dname, err := m.dstEntry(path)
	if err != nil {
		return err
	}
	if err := m.maker.FixMeta(spfd, sname, src.dev, src.ino, dpfd, dname, want.dev, want.ino, string(path)); err != nil {
		return err
	}
	if isHeld(path) {
		return nil
	}
	return m.touched(path)
}

// heldPrefix starts the name of a DST inode held for reuse in the run's
// own directory (holdReuse): no path of DST starts with a NUL.
const heldPrefix = "\x00held/"

func isHeld(path []byte) bool { return bytes.HasPrefix(path, []byte(heldPrefix)) }

// dstEntry returns the directory fd and name of a DST path, or of a name
// held in the run's directory.
func (m *Mirror) dstEntry(path []byte) (int, string, error) {
	if isHeld(path) {
		return m.runDir.Fd(), string(path[len(heldPrefix):]), nil
	}
	return m.dsts.parent(path)
}

// touched records that path's directory in DST changed: its times (and
// metadata) are set again at the end.
func (m *Mirror) touched(path []byte) error {
	return m.touch.Add(invert([]byte(dirOf(path)), markTouched))
}

// The last byte of a record of the touched sort: a directory whose
// metadata differs from SRC's sorts before the same directory merely
// touched, so the first record of a path says which it is.
const (
	markDiffers byte = iota
	markTouched
)

// invert encodes path so that the sort puts a directory after everything
// below it: its bytes complemented (paths hold no NUL, so no byte becomes
// 0xff), then 0xff, then mark. inverted decodes it.
func invert(path []byte, mark byte) []byte {
	out := make([]byte, len(path)+2)
	for i, c := range path {
		out[i] = ^c
	}
	out[len(path)] = 0xff
	out[len(path)+1] = mark
	return out
}

func inverted(b []byte) []byte {
	if len(b) < 2 {
		return nil // not a record of invert's (the caller checks)
	}
	out := make([]byte, len(b)-2)
	for i := range out {
		out[i] = ^b[i]
	}
	return out
}

// dirName is how a dry run names a directory: with a slash, as rsync -i
// does, and "./" for the top.
func dirName(path []byte) string {
	if len(path) == 0 {
		return "./"
	}
	return string(path) + "/"
}

// trash records a name set aside in directory dir, deleted at the end.
func (m *Mirror) trash(dir, name string) error {
	p := name
	if dir != "" {
		p = dir + "/" + name
	}
	return m.trashed.add([]byte(p))
}

// finishDirs is the last pass: every directory whose entries or metadata
// changed gets the source directory's owner, mode, xattrs and times,
// deepest first, so that later work in a directory does not move its
// mtime again.
func (m *Mirror) finishDirs(c *collector) error {
	err := eachPathRecord(c.dirfix, func(_ byte, path []byte) error { return m.touch.Add(invert(path, markDiffers)) })
	if err != nil {
		return err
	}
	err = eachPathRecord(c.mkdirs, func(_ byte, path []byte) error { return m.touch.Add(invert(path, markTouched)) })
	if err != nil {
		return err
	}
	r, err := m.sorted(m.touch, "touched")
	if err != nil {
		return err
	}
	ctr := m.o.Progress.Phase("finish", "dirs", "")
	defer m.o.Progress.End()
	var last []byte
	for {
		b, err := r.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(b) < 2 {
			return fmt.Errorf("mirror: bad record of the touched directories")
		}
		path := inverted(b)
		if last != nil && string(last) == string(path) {
			continue
		}
		last = append(last[:0], path...)
		ctr.Done.Add(1)
		differs := b[len(b)-1] == markDiffers
		if m.o.DryRun {
			if differs {
				m.o.Action("meta", dirName(path), "")
				m.st.DirsFixed++
			}
			continue
		}
		if err := m.fixDir(path); err != nil {
			m.failErr(msg.Quote(string(path)), err)
		} else if differs {
			m.st.DirsFixed++
		}
	}
}

// fixDir gives DST's directory path the source directory's metadata.
func (m *Mirror) fixDir(path []byte) error {
	sfd, err := m.srcs.openDir(path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil // not in SRC (a directory set aside, deleted later)
		}
		return err
	}
	defer unix.Close(sfd)
	dfd, err := m.dsts.openDir(path)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	return m.maker.FixDir(sfd, dfd, string(path))
}
