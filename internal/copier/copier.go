// Package copier is the copy stage: it creates the destination directory
// skeleton, then walks the plan's inode groups (sorted by (dev, ino)) with
// several workers, creating each inode once at its first path (data read once,
// reflink or copy_file_range when the kernel can) and linking every other
// path to it, and finally applies directory metadata deepest first.
//
// Every destination operation is relative to a directory fd reached from the
// destination root one component at a time with O_NOFOLLOW, so nothing is
// ever written through a symlink.
package copier

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/budget"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
)

// Options configure a Copier.
type Options struct {
	Jobs int
	// Owner restores uid/gid (needs root or CAP_CHOWN).
	Owner bool
	// Retries of a file that changed while it was copied, before it is
	// reported as changed.
	Retries int
	// OnError reports a per-path failure (path relative to the tree root).
	OnError func(rel string, err error)
	// OnWarn reports a condition once per key (e.g. "xattr user: operation
	// not supported").
	OnWarn func(key, msg string)
	// DirCacheSize bounds the open directory fds of each side.
	DirCacheSize int
	// SrcDevMap maps device numbers of the scan to the ones the source
	// has now (a resumed job after a reboot that renumbered the device).
	SrcDevMap map[uint64]uint64
	// NoPrefetch turns off the read-ahead of source files (see
	// prefetch.go).
	NoPrefetch bool
	// NoRing makes every link with its own linkat instead of batches
	// through io_uring.
	NoRing bool
	// NoDirect copies data between filesystems with sendfile only, never
	// with O_DIRECT writes from the mapped source.
	NoDirect bool
	// Copied, when not nil (a move), gets a record of each group's copy:
	// the source's ctime then, and whether the copy is complete.
	Copied *plan.Copied
}

// Stats of a copy; all fields are updated atomically.
type Stats struct {
	Groups       atomic.Int64 // inodes created from source groups
	Paths        atomic.Int64 // destination paths made (first paths and links)
	Links        atomic.Int64 // hard links made
	RingLinks    atomic.Int64 // of those, made in io_uring batches
	Bytes        atomic.Int64 // data bytes written (or cloned)
	Cloned       atomic.Int64 // files reflinked
	CopyRange    atomic.Int64 // files copied with copy_file_range
	Sendfile     atomic.Int64 // files copied with sendfile (across filesystems)
	Direct       atomic.Int64 // files written with O_DIRECT from the mapped source (across filesystems)
	ReadWrite    atomic.Int64 // files copied through a buffer
	Dirs         atomic.Int64 // directories created
	SplitGroups  atomic.Int64 // groups split because of EMLINK
	ExtraCopies  atomic.Int64 // extra inode copies (EMLINK or no hard links)
	ExtraBytes   atomic.Int64 // bytes of those extra copies
	OutsideLinks atomic.Int64 // inodes with links outside the source tree
	Changed      atomic.Int64 // files that kept changing while copied
	Errors       atomic.Int64 // per-path errors
}

// Copier copies one planned tree.
type Copier struct {
	opt              Options
	srcRoot, dstRoot int
	srcDev, dstDev   uint64
	dirs             *plan.DirTable
	srcDirs, dstDirs *fsx.DirCache
	caps             *fsx.Caps
	Stats            Stats

	noLinks  atomic.Bool // destination refuses hard links
	anySplit atomic.Bool // splits has entries
	splitMu  sync.Mutex
	splits   map[string]*linkTarget // groups split on EMLINK, by first path (dir id + name)
	noAtime  atomic.Bool            // O_NOATIME refused (not owner)
	fatalMu  sync.Mutex
	fatalErr error
}

// New returns a copier from the tree at srcRoot to the tree at dstRoot (both
// open directory fds, owned by the caller).
func New(srcRoot, dstRoot int, dirs *plan.DirTable, opt Options) (*Copier, error) {
	if opt.Jobs < 1 {
		opt.Jobs = 1
	}
	srcCache, dstCache := opt.DirCacheSize, opt.DirCacheSize
	if opt.DirCacheSize == 0 {
		srcCache = budget.DirCacheSize(2, 0)
		dstCache = srcCache
	}
	if opt.OnError == nil {
		opt.OnError = func(string, error) {}
	}
	if opt.OnWarn == nil {
		opt.OnWarn = func(string, string) {}
	}
	var ss, ds unix.Stat_t
	if err := unix.Fstat(srcRoot, &ss); err != nil {
		return nil, err
	}
	if err := unix.Fstat(dstRoot, &ds); err != nil {
		return nil, err
	}
	c := &Copier{opt: opt, srcRoot: srcRoot, dstRoot: dstRoot, srcDev: ss.Dev, dstDev: ds.Dev, dirs: dirs, caps: fsx.NewCaps()}
	c.srcDirs = fsx.NewDirCache(srcRoot, dirs.Resolve, unix.O_PATH, srcCache)
	c.dstDirs = fsx.NewDirCache(dstRoot, dirs.Resolve, unix.O_PATH, dstCache)
	return c, nil
}

// SetCopied sets Options.Copied: where to record each group's copy (for a
// move; the file is made after the directories).
func (c *Copier) SetCopied(cp *plan.Copied) { c.opt.Copied = cp }

// Close releases cached directory fds.
func (c *Copier) Close() {
	c.srcDirs.Close()
	c.dstDirs.Close()
}

// Methods reports whether reflink and copy_file_range were used.
func (c *Copier) Methods() (clone, cfr bool) { return c.caps.Methods() }

// NoHardLinks reports whether the destination refused hard links.
func (c *Copier) NoHardLinks() bool { return c.noLinks.Load() }

// fatal errors stop the job: the destination is full, read-only or broken.
func isFatal(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EROFS)
}

func (c *Copier) setFatal(err error) {
	c.fatalMu.Lock()
	if c.fatalErr == nil {
		c.fatalErr = err
	}
	c.fatalMu.Unlock()
}

// Fatal returns the error that stopped the copy, if any.
func (c *Copier) Fatal() error {
	c.fatalMu.Lock()
	defer c.fatalMu.Unlock()
	return c.fatalErr
}

func (c *Copier) fail(dir uint32, name []byte, err error) {
	if isFatal(err) {
		c.setFatal(fmt.Errorf("%s: %w", fsx.Quote(c.dirs.Rel(dir, name)), err))
		return
	}
	c.Stats.Errors.Add(1)
	c.opt.OnError(c.dirs.Rel(dir, name), err)
}

// MakeDirs creates every directory of the plan with id >= from under the
// destination root, parents first, owner-writable (final modes come in
// Finish). done is called after each directory. Existing directories are
// accepted (resume).
func (c *Copier) MakeDirs(from uint32, done func()) error {
	if from == 0 {
		from = 1
	}
	return c.dirs.Scan(from, func(d *plan.Dir) error {
		if done != nil {
			defer done()
		}
		if d.Flags&plan.DirGone != 0 {
			return nil
		}
		pfd, err := c.dstDirs.Acquire(d.Parent)
		if err != nil {
			c.fail(d.ID, nil, fmt.Errorf("open parent directory: %w", err))
			return c.Fatal()
		}
		name := string(d.Name)
		err = unix.Mkdirat(pfd, name, 0o700)
		if errors.Is(err, unix.EEXIST) {
			var st unix.Stat_t
			if e2 := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); e2 == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
				err = nil
			}
		}
		c.dstDirs.Release(d.Parent)
		if err != nil {
			c.fail(d.ID, nil, fmt.Errorf("mkdir: %w", err))
			return c.Fatal()
		}
		c.Stats.Dirs.Add(1)
		return nil
	})
}

// openDir opens directory d of one side for metadata work, without
// following symlinks.
func openDir(cache *fsx.DirCache, root int, d *plan.Dir, flags int) (int, error) {
	if d.ID == 0 {
		return unix.Openat(root, ".", flags|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	pfd, err := cache.Acquire(d.Parent)
	if err != nil {
		return -1, err
	}
	defer cache.Release(d.Parent)
	return unix.Openat(pfd, string(d.Name), flags|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// Finish applies the final owner, xattrs, mode and times to every directory
// with id < below, deepest first (children have higher ids than their
// parents), and to the root only when root is true. done is called per
// directory.
func (c *Copier) Finish(below uint32, root bool, done func()) error {
	var x fsx.Xattrs
	return c.dirs.ScanReverse(below, func(d *plan.Dir) error {
		if done != nil {
			defer done()
		}
		if d.Flags&plan.DirGone != 0 || (d.ID == 0 && !root) {
			return nil
		}
		c.finishDir(d, &x)
		return c.Fatal()
	})
}

// FinishRoot applies the root directory's metadata (after the job's state
// has left the destination root, so that its mtime stays).
func (c *Copier) FinishRoot() error {
	var d plan.Dir
	if err := c.dirs.Get(0, &d); err != nil {
		return err
	}
	var x fsx.Xattrs
	c.finishDir(&d, &x)
	return c.Fatal()
}

// InRoot runs f (which changes the root's content, as removing the job's
// state does) after FinishRoot: with the owner's write permission on the
// root for the time of f when its final mode lacks it, and with the root's
// times set again afterwards.
func (c *Copier) InRoot(f func() error) error {
	var d plan.Dir
	if err := c.dirs.Get(0, &d); err != nil {
		return err
	}
	err := f()
	if err != nil && d.Mode&0o300 != 0o300 && errors.Is(err, unix.EACCES) {
		if cerr := unix.Fchmod(c.dstRoot, d.Mode&07777|0o700); cerr == nil {
			err = f()
			if cerr := unix.Fchmod(c.dstRoot, d.Mode&07777); cerr != nil {
				c.fail(0, nil, fmt.Errorf("chmod: %w", cerr))
			}
		}
	}
	if terr := futimens(c.dstRoot, []unix.Timespec{d.Atime, d.Mtime}); terr != nil {
		c.fail(0, nil, fmt.Errorf("set times: %w", terr))
	}
	return err
}

func (c *Copier) finishDir(d *plan.Dir, x *fsx.Xattrs) {
	dfd, err := openDir(c.dstDirs, c.dstRoot, d, unix.O_RDONLY)
	if err != nil {
		c.fail(d.ID, nil, fmt.Errorf("open directory for metadata: %w", err))
		return
	}
	defer unix.Close(dfd)
	c.newEntries(d, dfd)
	if c.opt.Owner {
		if err := unix.Fchown(dfd, int(d.Uid), int(d.Gid)); err != nil {
			c.metaFail(d.ID, nil, "chown", err)
		}
	} else {
		c.ownerWarn(d.Uid, d.Gid)
	}
	if d.Flags&(plan.DirUnreadable) == 0 {
		if err := c.copyDirXattrs(d, dfd, x); err != nil {
			c.fail(d.ID, nil, err)
		}
	}
	if err := unix.Fchmod(dfd, d.Mode&07777); err != nil {
		c.metaFail(d.ID, nil, "chmod", err)
	}
	ts := []unix.Timespec{d.Atime, d.Mtime}
	if err := futimens(dfd, ts); err != nil {
		c.fail(d.ID, nil, fmt.Errorf("set times: %w", err))
	}
}

// errAdded is the error of a source entry that the scan did not see.
var errAdded = errors.New("in SRC but not copied: added (or renamed) after the scan; rerun the copy into an empty DST, or compare with hlcp verify")

// newEntries reports the entries of source directory d that its copy dfd
// lacks, when d's mtime is not what the scan saw: they came after the
// scan (a resumed job works from the scan of its first run), and were not
// copied. One fstatat per directory; the directory is listed only when
// it changed.
func (c *Copier) newEntries(d *plan.Dir, dfd int) {
	if d.Flags&(plan.DirUnreadable|plan.DirGone|plan.DirMountSkipped) != 0 {
		return
	}
	var st unix.Stat_t
	if d.ID == 0 {
		if unix.Fstat(c.srcRoot, &st) != nil {
			return
		}
	} else {
		pfd, err := c.srcDirs.Acquire(d.Parent)
		if err != nil {
			return
		}
		err = unix.Fstatat(pfd, string(d.Name), &st, unix.AT_SYMLINK_NOFOLLOW)
		c.srcDirs.Release(d.Parent)
		if err != nil {
			return
		}
	}
	if st.Mtim == d.Mtime || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return
	}
	sfd, err := openDir(c.srcDirs, c.srcRoot, d, unix.O_RDONLY|unix.O_NOATIME)
	if errors.Is(err, unix.EPERM) {
		sfd, err = openDir(c.srcDirs, c.srcRoot, d, unix.O_RDONLY)
	}
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(sfd), "source directory")
	defer f.Close()
	for {
		names, err := f.Readdirnames(256)
		for _, n := range names {
			var ds unix.Stat_t
			if errors.Is(unix.Fstatat(dfd, n, &ds, unix.AT_SYMLINK_NOFOLLOW), unix.ENOENT) {
				c.fail(d.ID, []byte(n), errAdded)
			}
		}
		if err != nil || len(names) == 0 {
			return
		}
	}
}

// copyDirXattrs copies the xattrs of source directory d to dfd. Below the
// root they are read by name in d's (cached) parent, so the directory
// needs no open and close of its own; the root has no parent to go by.
func (c *Copier) copyDirXattrs(d *plan.Dir, dfd int, x *fsx.Xattrs) error {
	if d.ID == 0 {
		sfd, err := openDir(c.srcDirs, c.srcRoot, d, unix.O_RDONLY)
		if err != nil {
			return fmt.Errorf("open source directory for xattrs: %w", err)
		}
		defer unix.Close(sfd)
		return x.CopyFd(sfd, dfd, c.xattrErr)
	}
	pfd, err := c.srcDirs.Acquire(d.Parent)
	if err != nil {
		return fmt.Errorf("open source directory for xattrs: %w", err)
	}
	defer c.srcDirs.Release(d.Parent)
	return x.CopyPathToFd(fsx.ProcPath(pfd, string(d.Name)), dfd, c.xattrErr)
}

// futimens sets the times of an open file.
var futimens = fsx.Futimens

func (c *Copier) xattrErr(e *fsx.XattrError) {
	c.opt.OnWarn("xattr "+e.Kind(), fmt.Sprintf("the destination did not take some extended attributes (%s); they were not copied", e.Kind()))
}

// metaFail reports a failed chown or chmod. A destination that cannot
// hold owners or modes at all (vfat, exfat, some network filesystems:
// EPERM, EOPNOTSUPP, EINVAL or, through FUSE, ENOSYS for every file) gets
// one warning per kind, not an error per file; metaFail then reports
// true.
func (c *Copier) metaFail(dir uint32, name []byte, op string, err error) (warned bool) {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if c.opt.Owner || op != "chown" {
			what := map[string]string{"chown": "file owners (uid/gid)", "chmod": "these permission bits"}[op]
			c.opt.OnWarn("meta "+op, fmt.Sprintf("the destination cannot store %s (%s: %v); they were not copied", what, op, err))
			return true
		}
	}
	c.fail(dir, name, fmt.Errorf("%s: %w", op, err))
	return false
}

var myUID, myGID = uint32(os.Geteuid()), uint32(os.Getegid())

// createMode is the mode to create a regular file with: its own when the
// new file may start with it (no setuid, setgid or sticky bit, which a
// chown clears, and owner write, without which the owner could not set
// its user xattrs), else 0600. Whether the file got it (a umask, a default
// ACL or a filesystem may give it another) is seen by an fstat of the new
// file, which decides whether a chmod is needed.
func createMode(mode uint32) uint32 {
	m := mode & 07777
	if m&07000 != 0 || m&0o200 == 0 {
		return 0o600
	}
	return m
}

func (c *Copier) ownerWarn(uid, gid uint32) {
	if uid != myUID || gid != myGID {
		c.opt.OnWarn("owner", "not running as root: file ownership (uid/gid) was not preserved")
	}
}

// Stop makes a running CopyPlan stop at the next task boundary, checkpoint
// and return err.
func (c *Copier) Stop(err error) { c.setFatal(err) }

// Remaining estimates the space the groups of the plan from offset from
// still need in the destination: the allocated size of each group's first
// source path (one fstatat per remaining inode). It gives up after limit
// and then reports complete=false (the figure is a lower bound).
func (c *Copier) Remaining(in Input, from int64, limit time.Duration) (bytes, inodes int64, complete bool, err error) {
	r, err := plan.OpenReader(in.Dir, plan.PlanFile, in.Plan, from)
	if err != nil {
		return 0, 0, false, err
	}
	defer r.Close()
	deadline := time.Now().Add(limit)
	var prev []byte
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return bytes, inodes, true, nil
		}
		if err != nil {
			return bytes, inodes, false, err
		}
		if prev != nil && plan.SameInode(prev, rec) {
			continue
		}
		prev = append(prev[:0], rec...)
		inodes++
		if inodes%1024 == 0 && time.Now().After(deadline) {
			return bytes, inodes, false, nil
		}
		e, err := plan.DecodeEntry(rec)
		if err != nil || e.Type != fsx.TypeReg {
			continue
		}
		pfd, err := c.srcDirs.Acquire(e.Dir)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(pfd, string(e.Name), &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			bytes += st.Blocks * 512
		}
		c.srcDirs.Release(e.Dir)
	}
}
