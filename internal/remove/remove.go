// Package remove is the last stage of `hlcp move`: once the copy is
// complete and durable, it removes each source path whose copy in the
// destination still matches it, then the source directories that became
// empty, deepest first.
//
// It walks the same plan as the copy (groups in inode order), so a
// checkpoint is again a plan offset, and a rerun after a crash redoes the
// groups after it: a source path already gone is skipped. A path is removed
// only when the destination has it with the same type, size, mtime, mode,
// owner and xattrs (and, with Checksum, the same content), and when its
// inode has not changed since it was copied (its ctime then is in the
// job's copy records); one that changed since is removed only when a full
// comparison, content included, finds its copy equal. At no moment is a
// path missing from both trees: a checked path is first renamed to a
// quarantine name in its directory, checked again there (so that a new
// version renamed over the path meanwhile is never the one deleted), and
// only then unlinked; if it is not the checked inode, it is renamed back.
package remove

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"hlcp/internal/msg"
	"io"
	"os"
	"sort"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/budget"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
	"hlcp/internal/testhook"
)

// Options of a removal.
type Options struct {
	// Checksum compares the content of each inode pair before removing.
	Checksum bool
	// OnError reports a source path that was kept, or could not be removed.
	OnError func(rel string, err error)
	// DirCacheSize bounds the open directory fds of each side.
	DirCacheSize int
	// SrcDevMap maps device numbers of the scan to the source's current
	// ones (see copier.Options).
	SrcDevMap map[uint64]uint64
	// ProbeDir is where to probe what the destination filesystem keeps
	// (time resolution, modes, owners): the job's state directory when it
	// is on that filesystem, so that a crash leaves no probe file in DST
	// itself. nil probes in DST's root.
	ProbeDir *fsx.Dir
	// Copied is the copy's record of each group (see plan.Copied).
	Copied *plan.Copied
	// Owner: compare owners (the copy restored them: root).
	Owner bool
}

// Stats of a removal.
type Stats struct {
	Removed     atomic.Int64 // source paths removed
	Gone        atomic.Int64 // source paths already gone (an earlier run, or vanished)
	Kept        atomic.Int64 // source paths kept (no matching copy, or an error)
	Compared    atomic.Int64 // bytes compared (Checksum, or a source changed since its copy)
	FullChecks  atomic.Int64 // source inodes that changed since their copy, compared in full
	DirsRemoved atomic.Int64
	DirsKept    atomic.Int64
}

// Remover removes the source side of one planned tree.
type Remover struct {
	opt              Options
	srcRoot, dstRoot int
	dirs             *plan.DirTable
	srcDirs, dstDirs *fsx.DirCache
	timeSlack        int64 // ns of mtime difference accepted (coarse destination clocks)
	// What the destination keeps (probed): modes and owners are compared
	// only where it does.
	keepsModes, keepsOwners bool
	kept                    []uint64
	bufA, bufB              []byte
	x                       fsx.Xattrs
	Stats                   Stats
}

// New returns a remover from the tree at srcRoot (its paths are removed)
// against its copy at dstRoot. Both are open directory fds owned by the
// caller.
func New(srcRoot, dstRoot int, dirs *plan.DirTable, opt Options) *Remover {
	if opt.OnError == nil {
		opt.OnError = func(string, error) {}
	}
	if opt.DirCacheSize == 0 {
		opt.DirCacheSize = budget.DirCacheSize(2, 0)
	}
	r := &Remover{opt: opt, srcRoot: srcRoot, dstRoot: dstRoot, dirs: dirs}
	r.srcDirs = fsx.NewDirCache(srcRoot, dirs.Resolve, unix.O_PATH, opt.DirCacheSize)
	r.dstDirs = fsx.NewDirCache(dstRoot, dirs.Resolve, unix.O_PATH, opt.DirCacheSize)
	r.kept = make([]uint64, (dirs.Len()+63)/64)
	var sfs unix.Statfs_t
	probe := dstRoot
	if opt.ProbeDir != nil {
		var ds unix.Stat_t
		if ps, err := opt.ProbeDir.Stat(); err == nil && unix.Fstat(dstRoot, &ds) == nil && ps.Dev == ds.Dev {
			probe = opt.ProbeDir.Fd()
		}
	}
	p := probeDst(probe, opt.Owner)
	if unix.Fstatfs(dstRoot, &sfs) == nil && coarseClock(int64(sfs.Type)) || !p.exactTimes {
		r.timeSlack = 2e9
	}
	r.keepsModes, r.keepsOwners = p.modes, p.owners && opt.Owner
	return r
}

// probed is what the destination filesystem keeps.
type probed struct{ exactTimes, modes, owners bool }

// probeDst finds out, on a probe file in dirfd, whether the destination
// keeps an mtime to the nanosecond (FUSE drivers of fat and exfat round
// them, and statfs names only "fuseblk"), modes, and (as root) owners.
// When it cannot tell, it assumes it does: the comparisons are then
// strict.
func probeDst(dirfd int, owner bool) probed {
	p := probed{exactTimes: true, modes: true, owners: true}
	name := fmt.Sprintf(".hlcp-probe-%d", unix.Getpid())
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return p
	}
	defer unix.Unlinkat(dirfd, name, 0)
	defer unix.Close(fd)
	want := unix.Timespec{Sec: 1600000001, Nsec: 123456789}
	var st unix.Stat_t
	if unix.UtimesNanoAt(dirfd, name, []unix.Timespec{want, want}, unix.AT_SYMLINK_NOFOLLOW) == nil && unix.Fstat(fd, &st) == nil {
		p.exactTimes = st.Mtim == want
	}
	unix.Fchmod(fd, 0o604) // refused or ignored where modes are not kept
	if unix.Fstat(fd, &st) == nil {
		p.modes = st.Mode&0o7777 == 0o604
	}
	if owner {
		const id = 54321
		unix.Fchown(fd, id, id)
		if unix.Fstat(fd, &st) == nil {
			p.owners = st.Uid == id && st.Gid == id
		}
	}
	return p
}

// coarseClock reports filesystems that keep mtimes in 2-second steps.
func coarseClock(fsType int64) bool {
	const msdos, exfat = 0x4d44, 0x2011BAB0
	return fsType == msdos || fsType == exfat
}

// Close releases cached directory fds.
func (r *Remover) Close() {
	r.srcDirs.Close()
	r.dstDirs.Close()
}

func (r *Remover) markKept(dir uint32) {
	if int(dir/64) < len(r.kept) {
		r.kept[dir/64] |= 1 << (dir % 64)
	}
}

func (r *Remover) isKept(dir uint32) bool {
	return int(dir/64) < len(r.kept) && r.kept[dir/64]&(1<<(dir%64)) != 0
}

func (r *Remover) keep(dir uint32, name []byte, err error) {
	r.Stats.Kept.Add(1)
	r.markKept(dir)
	r.opt.OnError(r.dirs.Rel(dir, name), fmt.Errorf("kept in SRC: %w", err))
}

// group is what is known of the group being removed.
type group struct {
	index   int64 // in plan order
	matched bool  // a path of it matched its copy in this run
	dstDev  uint64
	dstIno  uint64
	// expect is the source inode's state as this run last left it: as
	// it matched, then after each of this run's own unlinks of its
	// paths (which change its ctime), seen through fd, an O_PATH fd of
	// the inode.
	expect unix.Stat_t
	fd     int
}

func (g *group) close() {
	if g.fd > 0 {
		unix.Close(g.fd)
	}
	*g = group{}
}

// sameInodeState reports whether two stats of one inode show the same content
// and metadata state (a write, chmod, chown, xattr change or link count
// change moves ctime).
func sameInodeState(a, b *unix.Stat_t) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Size == b.Size && a.Mtim == b.Mtim && a.Ctim == b.Ctim &&
		a.Mode == b.Mode && a.Uid == b.Uid && a.Gid == b.Gid
}

// sameButCtime is sameInodeState less ctime, which renaming an inode moves
// (forward) on the usual filesystems.
func sameButCtime(a, b *unix.Stat_t) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Size == b.Size && a.Mtim == b.Mtim &&
		a.Mode == b.Mode && a.Uid == b.Uid && a.Gid == b.Gid &&
		(b.Ctim.Sec > a.Ctim.Sec || b.Ctim.Sec == a.Ctim.Sec && b.Ctim.Nsec >= a.Ctim.Nsec)
}

// Input is the plan whose source paths are removed: plan.PlanFile in Dir,
// as it was written.
type Input struct {
	Dir  *fsx.Dir
	Plan blockfile.Info
}

// Files removes the source paths of the plan's groups from offset from
// (the start of group fromGroup) on. checkpoint is called at group
// boundaries about every `every` with the offset below which every group
// is handled and the number of groups below it, and once at the end. When
// ctx ends, the walk stops at the next group boundary, checkpoints, and
// returns the context's cause.
func (r *Remover) Files(ctx context.Context, in Input, from, fromGroup int64, ctr *progress.Counters, checkpoint func(off, groups int64) error, every time.Duration) error {
	pr, err := plan.OpenReader(in.Dir, plan.PlanFile, in.Plan, from)
	if err != nil {
		return err
	}
	defer pr.Close()
	if ctr == nil {
		ctr = new(progress.Counters)
	}
	var (
		prev []byte
		g    group
		last = time.Now()
		gi   = fromGroup - 1
	)
	defer g.close()
	for {
		off := pr.Offset()
		rec, err := pr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read plan: %w", err)
		}
		if prev == nil || !plan.SameInode(prev, rec) {
			if prev != nil {
				ctr.Done.Add(1)
			}
			if ctx.Err() != nil {
				if checkpoint != nil {
					checkpoint(off, gi+1)
				}
				return context.Cause(ctx)
			}
			if checkpoint != nil && every > 0 && time.Since(last) >= every {
				if err := checkpoint(off, gi+1); err != nil {
					return fmt.Errorf("checkpoint: %w", err)
				}
				last = time.Now()
			}
			prev = append(prev[:0], rec...)
			gi++
			g.close()
			g.index = gi
		}
		e, err := plan.DecodeEntry(rec)
		if err != nil {
			return err
		}
		if r.one(e, &g) {
			ctr.Paths.Add(1)
		}
	}
	if prev != nil {
		ctr.Done.Add(1)
	}
	if checkpoint != nil {
		return checkpoint(pr.Offset(), gi+1)
	}
	return nil
}

// QuarantineName is the name the source path name of inode (dev, ino),
// as the scan saw them, takes in its directory between its last check and
// its unlink. It depends on the name too, so that a path set aside by a
// run that was killed is put back under its own name, not under another
// link of the same inode; and on the scan's device number, not today's,
// so that a run after a reboot that renumbered the device finds it.
func QuarantineName(dev, ino uint64, name []byte) string {
	return fmt.Sprintf(".hlcp-rm-%x-%x-%08x", dev, ino, crc32.ChecksumIEEE(name))
}

// one handles one source path; it reports whether it was removed.
//
// The path is looked at, its copy record consulted, and then at once set
// aside under its quarantine name before anything slow (the comparison
// with DST, content included) is done: from then on no writer that goes
// by the path reaches the inode being compared, and a new version put at
// the path is a new file, which stays. Just before the unlink the set-aside
// inode must still be in the state it was compared in, ctime included.
func (r *Remover) one(e plan.Entry, g *group) bool {
	spfd, err := r.srcDirs.Acquire(e.Dir)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			r.Stats.Gone.Add(1) // its directory is gone: removed by an earlier run
			return false
		}
		r.keep(e.Dir, e.Name, fmt.Errorf("open source directory: %w", err))
		return false
	}
	defer r.srcDirs.Release(e.Dir)
	q := QuarantineName(e.Dev, e.Ino, e.Name)
	if d, ok := r.opt.SrcDevMap[e.Dev]; ok {
		e.Dev = d
	}
	name := string(e.Name)
	var ss unix.Stat_t
	if err := unix.Fstatat(spfd, name, &ss, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if !errors.Is(err, unix.ENOENT) {
			r.keep(e.Dir, e.Name, fmt.Errorf("lstat: %w", err))
			return false
		}
		return r.leftover(spfd, e, name, q, g)
	}
	if ss.Dev != e.Dev || ss.Ino != e.Ino {
		r.keep(e.Dir, e.Name, fmt.Errorf("replaced since the scan (its copy is of the old file)"))
		return false
	}
	dpfd, ds, ok := r.dstOf(e, name)
	if !ok {
		return false
	}
	defer r.dstDirs.Release(e.Dir)
	need, full, ok := r.decide(e, &ss, &ds, g, true)
	if !ok {
		return false
	}
	testhook.Pause("remove-rename")
	if err := renameNoReplace(spfd, name, q); err != nil {
		r.keep(e.Dir, e.Name, fmt.Errorf("set aside as %s before its removal: %w", q, err))
		return false
	}
	var qs unix.Stat_t
	if err := unix.Fstatat(spfd, q, &qs, unix.AT_SYMLINK_NOFOLLOW); err != nil || !sameButCtime(&ss, &qs) {
		r.putBack(spfd, e, name, q, fmt.Errorf("changed while it was checked against its copy"))
		return false
	}
	return r.finish(spfd, dpfd, e, name, q, &qs, &ds, g, need, full)
}

// leftover handles a source path whose name is gone: removed by an earlier
// run, or set aside by one that was killed before its unlink. What has its
// quarantine name is checked again (in full: its ctime moved with the
// rename) and removed, or put back. What has it but is not its inode (a
// new version that a killed run set aside in its place) is put back.
func (r *Remover) leftover(spfd int, e plan.Entry, name, q string, g *group) bool {
	var qs unix.Stat_t
	if unix.Fstatat(spfd, q, &qs, unix.AT_SYMLINK_NOFOLLOW) != nil {
		r.Stats.Gone.Add(1)
		return false
	}
	if qs.Dev != e.Dev || qs.Ino != e.Ino {
		r.putBack(spfd, e, name, q, fmt.Errorf("another file than the one copied was under its name (put back from %s)", q))
		return false
	}
	dpfd, ds, ok := r.dstOf(e, name)
	if !ok {
		r.putBack(spfd, e, name, q, nil)
		return false
	}
	defer r.dstDirs.Release(e.Dir)
	need, full, ok := r.decide(e, &qs, &ds, g, false)
	if !ok {
		r.putBack(spfd, e, name, q, nil)
		return false
	}
	return r.finish(spfd, dpfd, e, name, q, &qs, &ds, g, need, full)
}

// dstOf looks up the copy of source entry e in DST; it keeps e (and says
// false) when there is none. The caller releases e.Dir in r.dstDirs.
func (r *Remover) dstOf(e plan.Entry, name string) (int, unix.Stat_t, bool) {
	var ds unix.Stat_t
	dpfd, err := r.dstDirs.Acquire(e.Dir)
	if err != nil {
		r.keep(e.Dir, e.Name, fmt.Errorf("open destination directory: %w", err))
		return -1, ds, false
	}
	if err := unix.Fstatat(dpfd, name, &ds, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		r.dstDirs.Release(e.Dir)
		r.keep(e.Dir, e.Name, fmt.Errorf("not in DST (%w)", err))
		return -1, ds, false
	}
	return dpfd, ds, true
}

// decide says how the source inode (stat ss) must be compared with its
// copy ds: need is false when the group's inode pair matched already in
// this run and nothing changed since; full asks for the content too. The
// copy record decides whether the copy can be trusted at all (ok false:
// e is kept) and whether the inode changed since it was copied (then only
// a full comparison may let it go). trustCopy false (a leftover, whose
// ctime the rename moved) always compares in full.
func (r *Remover) decide(e plan.Entry, ss, ds *unix.Stat_t, g *group, trustCopy bool) (need, full, ok bool) {
	if g.matched && trustCopy && ds.Dev == g.dstDev && ds.Ino == g.dstIno && sameInodeState(ss, &g.expect) {
		return false, false, true
	}
	full, why := r.changedSinceCopy(g.index, ss)
	if why != nil {
		r.keep(e.Dir, e.Name, why)
		return false, false, false
	}
	full = full || r.opt.Checksum || !trustCopy
	if full {
		r.Stats.FullChecks.Add(1)
	}
	return true, full, true
}

// finish compares the set-aside q (stat qs) with its copy ds when need
// says so, checks that q is still in that state, and unlinks it; else it
// puts it back under name and keeps it.
func (r *Remover) finish(spfd, dpfd int, e plan.Entry, name, q string, qs, ds *unix.Stat_t, g *group, need, full bool) bool {
	if need {
		if err := r.match(spfd, dpfd, q, name, qs, ds, full); err != nil {
			r.putBack(spfd, e, name, q, err)
			return false
		}
	}
	var last unix.Stat_t
	if err := unix.Fstatat(spfd, q, &last, unix.AT_SYMLINK_NOFOLLOW); err != nil || !sameInodeState(qs, &last) {
		r.putBack(spfd, e, name, q, fmt.Errorf("changed while it was checked against its copy"))
		return false
	}
	if need {
		idx := g.index
		g.close()
		g.index = idx
		r.matched(spfd, q, qs, ds, g)
	}
	return r.unlinkAside(spfd, e, q, g)
}

// putBack renames the quarantined q back to name and keeps it (reporting
// why, when why is not nil).
func (r *Remover) putBack(spfd int, e plan.Entry, name, q string, why error) {
	if err := renameNoReplace(spfd, q, name); err != nil {
		r.keep(e.Dir, e.Name, fmt.Errorf("kept under the name %s: it could not be renamed back (%v)", q, err))
		return
	}
	if why != nil {
		r.keep(e.Dir, e.Name, why)
	}
}

// unlinkAside unlinks the checked, quarantined q, and notes the state that
// the unlink left the inode in, for the group's next path.
func (r *Remover) unlinkAside(spfd int, e plan.Entry, q string, g *group) bool {
	if err := unix.Unlinkat(spfd, q, 0); err != nil {
		r.putBack(spfd, e, string(e.Name), q, fmt.Errorf("unlink: %w", err))
		return false
	}
	if g.fd > 0 {
		unix.Fstat(g.fd, &g.expect)
	}
	r.Stats.Removed.Add(1)
	return true
}

// renameNoReplace renames old to new in dirfd, failing if new exists.
func renameNoReplace(dirfd int, old, new string) error {
	err := unix.Renameat2(dirfd, old, dirfd, new, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE here (old kernels, some FUSE filesystems).
		var st unix.Stat_t
		if unix.Fstatat(dirfd, new, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			return unix.EEXIST
		}
		err = unix.Renameat(dirfd, old, dirfd, new)
	}
	return err
}

// matched notes that the group's inode pair matched: the state it
// matched in, and an O_PATH fd of the source inode to follow it through
// this run's unlinks.
func (r *Remover) matched(spfd int, sname string, ss, ds *unix.Stat_t, g *group) {
	g.matched, g.dstDev, g.dstIno, g.expect = true, ds.Dev, ds.Ino, *ss
	fd, err := unix.Openat(spfd, sname, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Dev == ss.Dev && st.Ino == ss.Ino {
			g.fd = fd
		} else {
			unix.Close(fd)
		}
	}
}

// changedSinceCopy looks up the copy record of group gi: full says the
// inode's ctime is not the one its copy saw (or there is no record), so
// only a full comparison may let it go; why, when not nil, says the copy
// itself is not to be trusted.
func (r *Remover) changedSinceCopy(gi int64, ss *unix.Stat_t) (full bool, why error) {
	if r.opt.Copied == nil {
		return true, nil
	}
	ctime, flags, ok, err := r.opt.Copied.Get(gi)
	if err != nil {
		return false, fmt.Errorf("copy record: %w", err)
	}
	if !ok {
		return true, nil
	}
	if flags&plan.CopiedChanged != 0 {
		return false, fmt.Errorf("it changed while it was copied: its copy may match no single state of it")
	}
	if flags&plan.CopiedMetaIncomplete != 0 {
		return false, fmt.Errorf("some of its metadata (an xattr, an ACL, an owner, a mode or its times) could not be set on its copy (see the errors and warnings of the copy)")
	}
	return ctime != ss.Ctim, nil
}

// match checks that the destination inode ds (name in dpfd) is a copy of
// the source inode ss (sname in spfd): type, size and mtime, mode and
// owner where the destination keeps them, every xattr and ACL of the
// source, the target of a symlink, the device number of a device node,
// and with full the content.
func (r *Remover) match(spfd, dpfd int, sname, name string, ss, ds *unix.Stat_t, full bool) error {
	st, dt := ss.Mode&unix.S_IFMT, ds.Mode&unix.S_IFMT
	if st != dt {
		return fmt.Errorf("DST differs: type %s, not %s", fsx.TypeName(fsx.TypeOfMode(ds.Mode)), fsx.TypeName(fsx.TypeOfMode(ss.Mode)))
	}
	if ss.Size != ds.Size && st != unix.S_IFDIR {
		return fmt.Errorf("DST differs: size %d, not %d", ds.Size, ss.Size)
	}
	if d := ss.Mtim.Nano() - ds.Mtim.Nano(); d > r.timeSlack || -d > r.timeSlack {
		return fmt.Errorf("DST differs: mtime %s, not %s", time.Unix(0, ds.Mtim.Nano()).UTC().Format(time.RFC3339Nano), time.Unix(0, ss.Mtim.Nano()).UTC().Format(time.RFC3339Nano))
	}
	if r.keepsModes && st != unix.S_IFLNK && ss.Mode&07777 != ds.Mode&07777 {
		return fmt.Errorf("DST differs: mode %04o, not %04o", ds.Mode&07777, ss.Mode&07777)
	}
	if r.keepsOwners && (ss.Uid != ds.Uid || ss.Gid != ds.Gid) {
		return fmt.Errorf("DST differs: owner %d:%d, not %d:%d", ds.Uid, ds.Gid, ss.Uid, ss.Gid)
	}
	switch st {
	case unix.S_IFCHR, unix.S_IFBLK:
		if ss.Rdev != ds.Rdev {
			return fmt.Errorf("DST differs: device number")
		}
	case unix.S_IFLNK:
		a, err := fsx.Readlink(spfd, sname, nil)
		if err != nil {
			return fmt.Errorf("readlink: %w", err)
		}
		b, err := fsx.Readlink(dpfd, name, nil)
		if err != nil {
			return fmt.Errorf("readlink in DST: %w", err)
		}
		if !bytes.Equal(a, b) {
			return fmt.Errorf("DST differs: symlink target")
		}
	}
	if err := r.matchXattrs(spfd, dpfd, sname, name); err != nil {
		return err
	}
	if st == unix.S_IFREG && full {
		return r.compare(spfd, dpfd, sname, name, ss)
	}
	return nil
}

// matchXattrs checks that DST has the source's xattrs and ACLs, with the
// same values, and no others: an ACL entry or a file capability taken
// from the source after its copy must not live on in DST. The one
// exception is a security label that DST's own policy gives every new
// file (security.selinux), when the source has none.
func (r *Remover) matchXattrs(spfd, dpfd int, sname, name string) error {
	sx, err := r.x.ReadPath(fsx.ProcPath(spfd, sname))
	if err != nil {
		return fmt.Errorf("read xattrs: %w", err)
	}
	dx, err := r.x.ReadPath(fsx.ProcPath(dpfd, name))
	if err != nil {
		return fmt.Errorf("read xattrs in DST: %w", err)
	}
	i, j := 0, 0
	for i < len(sx) || j < len(dx) {
		switch {
		case j == len(dx) || i < len(sx) && sx[i].Name < dx[j].Name:
			return fmt.Errorf("DST differs: it lacks the xattr %s", msg.Quote(sx[i].Name))
		case i == len(sx) || dx[j].Name < sx[i].Name:
			if dx[j].Name != "security.selinux" {
				return fmt.Errorf("DST differs: it has the xattr %s, which SRC has not", msg.Quote(dx[j].Name))
			}
			j++
		default:
			if !bytes.Equal(dx[j].Value, sx[i].Value) {
				return fmt.Errorf("DST differs: xattr %s", msg.Quote(sx[i].Name))
			}
			i, j = i+1, j+1
		}
	}
	return nil
}

// compare reads both files and compares their bytes.
func (r *Remover) compare(spfd, dpfd int, sname, name string, ss *unix.Stat_t) error {
	size := ss.Size
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
	sfd, err := fsx.OpenNoAtime(spfd, sname, flags)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer unix.Close(sfd)
	dfd, err := fsx.OpenNoAtime(dpfd, name, flags)
	if err != nil {
		return fmt.Errorf("open in DST: %w", err)
	}
	defer unix.Close(dfd)
	if r.bufA == nil {
		r.bufA, r.bufB = make([]byte, 1<<20), make([]byte, 1<<20)
	}
	unix.Fadvise(sfd, 0, 0, unix.FADV_SEQUENTIAL)
	unix.Fadvise(dfd, 0, 0, unix.FADV_SEQUENTIAL)
	var off int64
	for {
		n, err := readFull(sfd, r.bufA)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		m, err := readFull(dfd, r.bufB[:max(n, 1)])
		if err != nil {
			return fmt.Errorf("read in DST: %w", err)
		}
		r.Stats.Compared.Add(int64(n))
		if n != m || !bytes.Equal(r.bufA[:n], r.bufB[:m]) {
			return fmt.Errorf("DST differs: content (near byte %d)", off)
		}
		off += int64(n)
		if n < len(r.bufA) {
			if off != size {
				return fmt.Errorf("changed while compared (%d bytes, not %d)", off, size)
			}
			var st unix.Stat_t
			if err := unix.Fstat(sfd, &st); err != nil || !sameInodeState(&st, ss) {
				return fmt.Errorf("changed while compared")
			}
			return nil
		}
	}
}

func readFull(fd int, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := unix.Read(fd, b[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if k == 0 {
			break
		}
		n += k
	}
	return n, nil
}

// Dirs removes the source directories with id < below, deepest first, when
// they are empty and their copy exists. The root (id 0) is not removed.
// checkpoint is called about every `every` with the id below which work
// remains; when ctx ends, Dirs checkpoints and returns its cause.
func (r *Remover) Dirs(ctx context.Context, below uint32, done func(), checkpoint func(below uint32) error, every time.Duration) error {
	last := time.Now()
	return r.dirs.ScanReverse(below, func(d *plan.Dir) error {
		if done != nil {
			defer done()
		}
		if d.ID == 0 {
			return nil
		}
		if ctx.Err() != nil {
			if checkpoint != nil {
				checkpoint(d.ID + 1)
			}
			return context.Cause(ctx)
		}
		if checkpoint != nil && every > 0 && time.Since(last) >= every {
			if err := checkpoint(d.ID + 1); err != nil {
				return fmt.Errorf("checkpoint: %w", err)
			}
			last = time.Now()
		}
		r.dir(d)
		return nil
	})
}

func (r *Remover) dir(d *plan.Dir) {
	keep := func(err error) {
		r.Stats.DirsKept.Add(1)
		r.markKept(d.Parent)
		if err != nil {
			r.opt.OnError(r.dirs.Rel(d.ID, nil), fmt.Errorf("kept in SRC: %w", err))
		}
	}
	if d.Flags&(plan.DirGone) != 0 {
		return
	}
	pfd, err := r.srcDirs.Acquire(d.Parent)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return // removed by an earlier run
		}
		keep(fmt.Errorf("open parent directory: %w", err))
		return
	}
	defer r.srcDirs.Release(d.Parent)
	// The cached fd of the directory itself would keep nothing alive
	// (rmdir works on open directories), but drop it: it is done with.
	r.srcDirs.Forget(d.ID)
	r.dstDirs.Forget(d.ID)
	var ss unix.Stat_t
	name := string(d.Name)
	if err := unix.Fstatat(pfd, name, &ss, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return
		}
		keep(fmt.Errorf("lstat: %w", err))
		return
	}
	if ss.Mode&unix.S_IFMT != unix.S_IFDIR {
		keep(fmt.Errorf("no longer a directory"))
		return
	}
	if d.Flags&plan.DirUnreadable != 0 {
		keep(fmt.Errorf("not copied (it could not be read)"))
		return
	}
	var ps unix.Stat_t
	if d.Flags&plan.DirMountSkipped != 0 && (unix.Fstat(pfd, &ps) != nil || ps.Dev != ss.Dev) {
		keep(fmt.Errorf("a mount point: not copied (-x)"))
		return
	}
	dev := d.Dev
	if m, ok := r.opt.SrcDevMap[dev]; ok {
		dev = m
	}
	if d.Flags&plan.DirMountSkipped == 0 && (ss.Dev != dev || ss.Ino != d.Ino) {
		keep(fmt.Errorf("replaced since the scan"))
		return
	}
	// Its copy must exist, with the metadata the source has now: an empty
	// directory is content too, and a chmod or chown of it since the scan
	// would be lost.
	dpfd, err := r.dstDirs.Acquire(d.Parent)
	if err != nil {
		keep(fmt.Errorf("open destination parent: %w", err))
		return
	}
	err = r.matchDir(pfd, dpfd, name, &ss)
	r.dstDirs.Release(d.Parent)
	if err != nil {
		keep(err)
		return
	}
	err = unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR)
	switch {
	case err == nil || errors.Is(err, unix.ENOENT):
		r.Stats.DirsRemoved.Add(1)
	case errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST):
		if r.isKept(d.ID) {
			keep(nil) // what is left in it was reported
		} else {
			keep(fmt.Errorf("not empty (entries added since the scan?)"))
		}
	default:
		keep(fmt.Errorf("rmdir: %w", err))
	}
}

// matchDir checks that DST has a directory name (in dpfd) with the mode,
// owner (where DST keeps them) and xattrs of the source directory name
// (stat ss, in spfd). Times are not compared: removing the source's
// entries changed its mtime.
func (r *Remover) matchDir(spfd, dpfd int, name string, ss *unix.Stat_t) error {
	var ds unix.Stat_t
	if err := unix.Fstatat(dpfd, name, &ds, unix.AT_SYMLINK_NOFOLLOW); err != nil || ds.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("no directory in DST (%v)", err)
	}
	if r.keepsModes && ss.Mode&07777 != ds.Mode&07777 {
		return fmt.Errorf("DST differs: mode %04o, not %04o", ds.Mode&07777, ss.Mode&07777)
	}
	if r.keepsOwners && (ss.Uid != ds.Uid || ss.Gid != ds.Gid) {
		return fmt.Errorf("DST differs: owner %d:%d, not %d:%d", ds.Uid, ds.Gid, ss.Uid, ss.Gid)
	}
	return r.matchXattrs(spfd, dpfd, name, name)
}

// Leftovers lists up to max names still in SRC's top directory (after
// Dirs), and how many more there are.
func (r *Remover) Leftovers(max int) (names []string, more int) {
	fd, err := unix.Openat(r.srcRoot, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0
	}
	f := os.NewFile(uintptr(fd), "SRC")
	defer f.Close()
	for {
		batch, err := f.Readdirnames(1024)
		for _, n := range batch {
			if len(names) < max {
				names = append(names, n)
			} else {
				more++
			}
		}
		if err != nil || len(batch) == 0 {
			break
		}
	}
	sort.Strings(names)
	return names, more
}
