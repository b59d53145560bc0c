// Package remove is the last stage of `hlcp move`: once the copy is
// complete and durable, it removes each source path whose copy in the
// destination still matches it, then the source directories that became
// empty, deepest first.
//
// It walks the same plan as the copy (groups in inode order), so a
// checkpoint is again a plan offset, and a rerun after a crash redoes the
// groups after it: a source path already gone is skipped. A path is removed
// only when the destination has it with the same type, size and mtime (and,
// with Checksum, the same content): at no moment is a path missing from
// both trees.
package remove

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
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
	// ProbeDir is where to probe the destination filesystem's time
	// resolution: the job's state directory when it is on that
	// filesystem, so that a crash leaves no probe file in DST itself.
	// "" probes in DST's root.
	ProbeDir string
}

// Stats of a removal.
type Stats struct {
	Removed     atomic.Int64 // source paths removed
	Gone        atomic.Int64 // source paths already gone (an earlier run, or vanished)
	Kept        atomic.Int64 // source paths kept (no matching copy, or an error)
	Compared    atomic.Int64 // bytes compared (Checksum)
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
	kept             []uint64
	bufA, bufB       []byte
	Stats            Stats
}

// New returns a remover from the tree at srcRoot (its paths are removed)
// against its copy at dstRoot. Both are open directory fds owned by the
// caller.
func New(srcRoot, dstRoot int, dirs *plan.DirTable, opt Options) *Remover {
	if opt.OnError == nil {
		opt.OnError = func(string, error) {}
	}
	if opt.DirCacheSize == 0 {
		opt.DirCacheSize = fsx.DirCacheSize(2, 0)
	}
	r := &Remover{opt: opt, srcRoot: srcRoot, dstRoot: dstRoot, dirs: dirs}
	r.srcDirs = fsx.NewDirCache(srcRoot, dirs.Resolve, unix.O_PATH, opt.DirCacheSize)
	r.dstDirs = fsx.NewDirCache(dstRoot, dirs.Resolve, unix.O_PATH, opt.DirCacheSize)
	r.kept = make([]uint64, (dirs.Len()+63)/64)
	var sfs unix.Statfs_t
	probe := dstRoot
	if opt.ProbeDir != "" {
		var ps, ds unix.Stat_t
		if fd, err := unix.Open(opt.ProbeDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
			defer unix.Close(fd)
			if unix.Fstat(fd, &ps) == nil && unix.Fstat(dstRoot, &ds) == nil && ps.Dev == ds.Dev {
				probe = fd
			}
		}
	}
	if unix.Fstatfs(dstRoot, &sfs) == nil && coarseClock(int64(sfs.Type)) || !exactTimes(probe) {
		r.timeSlack = 2e9
	}
	return r
}

// exactTimes reports whether the filesystem of dirfd keeps an mtime to the
// nanosecond, by setting one on a probe file (FUSE drivers of fat and
// exfat round them, and statfs names only "fuseblk").
func exactTimes(dirfd int) bool {
	name := fmt.Sprintf(".hlcp-probe-%d", unix.Getpid())
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return true // cannot tell: be strict
	}
	defer unix.Unlinkat(dirfd, name, 0)
	defer unix.Close(fd)
	want := unix.Timespec{Sec: 1600000001, Nsec: 123456789}
	var st unix.Stat_t
	if unix.UtimesNanoAt(dirfd, name, []unix.Timespec{want, want}, unix.AT_SYMLINK_NOFOLLOW) != nil || unix.Fstat(fd, &st) != nil {
		return true
	}
	return st.Mtim == want
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

// errStop is returned by Files and Dirs when stop said so.
var errStop = errors.New("stopped")

// group is what is known of the group being removed: the destination inode
// that was found to match its source inode.
type group struct {
	matched        bool
	dstDev, dstIno uint64
	src            unix.Stat_t // the source inode's state when it matched
}

// sameState reports whether two stats of one inode show the same content
// and metadata state (any write or chmod changes ctime).
func sameState(a, b *unix.Stat_t) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Size == b.Size && a.Mtim == b.Mtim && a.Ctim == b.Ctim
}

// Files removes the source paths of the plan's groups from offset from on.
// checkpoint is called at group boundaries about every `every` with the
// offset below which every group is handled, and once at the end. stop,
// when it returns an error, ends the walk at the next group boundary.
func (r *Remover) Files(planPath string, from int64, ctr *progress.Counters, checkpoint func(off int64) error, every time.Duration, stop func() error) error {
	pr, err := plan.OpenReader(planPath, from)
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
	)
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
			if err := stop(); err != nil {
				if checkpoint != nil {
					checkpoint(off)
				}
				return err
			}
			if checkpoint != nil && every > 0 && time.Since(last) >= every {
				if err := checkpoint(off); err != nil {
					return fmt.Errorf("checkpoint: %w", err)
				}
				last = time.Now()
			}
			prev = append(prev[:0], rec...)
			g = group{}
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
		return checkpoint(pr.Offset())
	}
	return nil
}

// one handles one source path; it reports whether it was removed.
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
	name := string(e.Name)
	var ss unix.Stat_t
	if err := unix.Fstatat(spfd, name, &ss, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			r.Stats.Gone.Add(1)
			return false
		}
		r.keep(e.Dir, e.Name, fmt.Errorf("lstat: %w", err))
		return false
	}
	if d, ok := r.opt.SrcDevMap[e.Dev]; ok {
		e.Dev = d
	}
	if ss.Dev != e.Dev || ss.Ino != e.Ino {
		r.keep(e.Dir, e.Name, fmt.Errorf("replaced since the scan (its copy is of the old file)"))
		return false
	}
	dpfd, err := r.dstDirs.Acquire(e.Dir)
	if err != nil {
		r.keep(e.Dir, e.Name, fmt.Errorf("open destination directory: %w", err))
		return false
	}
	defer r.dstDirs.Release(e.Dir)
	var ds unix.Stat_t
	if err := unix.Fstatat(dpfd, name, &ds, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		r.keep(e.Dir, e.Name, fmt.Errorf("not in DST (%w)", err))
		return false
	}
	if !(g.matched && ds.Dev == g.dstDev && ds.Ino == g.dstIno && sameState(&ss, &g.src)) {
		if err := r.match(spfd, dpfd, name, &ss, &ds); err != nil {
			r.keep(e.Dir, e.Name, err)
			return false
		}
		g.matched, g.dstDev, g.dstIno, g.src = true, ds.Dev, ds.Ino, ss
	}
	// Last look before the unlink: the name must still be the inode that
	// matched, in the same state (a file written, or renamed over this
	// name, while it was compared is kept).
	var again unix.Stat_t
	if err := unix.Fstatat(spfd, name, &again, unix.AT_SYMLINK_NOFOLLOW); err != nil || !sameState(&ss, &again) {
		r.keep(e.Dir, e.Name, fmt.Errorf("changed while checked against its copy"))
		return false
	}
	if err := unix.Unlinkat(spfd, name, 0); err != nil {
		if errors.Is(err, unix.ENOENT) {
			r.Stats.Gone.Add(1)
			return false
		}
		r.keep(e.Dir, e.Name, fmt.Errorf("unlink: %w", err))
		return false
	}
	r.Stats.Removed.Add(1)
	return true
}

// match checks that the destination inode ds is a copy of the source inode
// ss: type, size and mtime, the target of a symlink, the device number of
// a device node, and with Checksum the content.
func (r *Remover) match(spfd, dpfd int, name string, ss, ds *unix.Stat_t) error {
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
	switch st {
	case unix.S_IFCHR, unix.S_IFBLK:
		if ss.Rdev != ds.Rdev {
			return fmt.Errorf("DST differs: device number")
		}
	case unix.S_IFLNK:
		a, err := readlink(spfd, name, ss.Size)
		if err != nil {
			return fmt.Errorf("readlink: %w", err)
		}
		b, err := readlink(dpfd, name, ds.Size)
		if err != nil {
			return fmt.Errorf("readlink in DST: %w", err)
		}
		if !bytes.Equal(a, b) {
			return fmt.Errorf("DST differs: symlink target")
		}
	case unix.S_IFREG:
		if r.opt.Checksum {
			return r.compare(spfd, dpfd, name, ss)
		}
	}
	return nil
}

func readlink(dirfd int, name string, size int64) ([]byte, error) {
	buf := make([]byte, size+1)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return nil, err
	}
	if int64(n) != size {
		return nil, fmt.Errorf("symlink changed while read")
	}
	return buf[:n], nil
}

// compare reads both files and compares their bytes.
func (r *Remover) compare(spfd, dpfd int, name string, ss *unix.Stat_t) error {
	size := ss.Size
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
	sfd, err := fsx.OpenNoAtime(spfd, name, flags)
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
			if err := unix.Fstat(sfd, &st); err != nil || !sameState(&st, ss) {
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
// remains.
func (r *Remover) Dirs(below uint32, done func(), checkpoint func(below uint32) error, every time.Duration, stop func() error) error {
	last := time.Now()
	return r.dirs.ScanReverse(below, func(d *plan.Dir) error {
		if done != nil {
			defer done()
		}
		if d.ID == 0 {
			return nil
		}
		if err := stop(); err != nil {
			if checkpoint != nil {
				checkpoint(d.ID + 1)
			}
			return err
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
	if d.Flags&(plan.DirMountSkipped|plan.DirUnreadable) != 0 {
		keep(fmt.Errorf("not copied (mount point or unreadable)"))
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
	// Its copy must exist: an empty directory is content too.
	dpfd, err := r.dstDirs.Acquire(d.Parent)
	if err != nil {
		keep(fmt.Errorf("open destination parent: %w", err))
		return
	}
	var ds unix.Stat_t
	err = unix.Fstatat(dpfd, name, &ds, unix.AT_SYMLINK_NOFOLLOW)
	r.dstDirs.Release(d.Parent)
	if err != nil || ds.Mode&unix.S_IFMT != unix.S_IFDIR {
		keep(fmt.Errorf("no directory in DST (%v)", err))
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
