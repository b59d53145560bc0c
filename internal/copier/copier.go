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
	"context"
	"errors"
	"fmt"
	"hlcp/internal/msg"
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

	// ctx is the one way the copier stops: it ends when the job's
	// context does (a signal) or when the copier meets a fatal error
	// (setFatal cancels it with the error as its cause). stopped mirrors
	// it for the workers' loops, which look at it per record.
	ctx     context.Context
	cancel  context.CancelCauseFunc
	stopped atomic.Bool
	// rel: a Maker's path of what it is making, for messages.
	rel string
}

// New returns a copier from the tree at srcRoot to the tree at dstRoot (both
// open directory fds, owned by the caller). It stops, at the next task
// boundary and with a checkpoint, when ctx ends.
func New(ctx context.Context, srcRoot, dstRoot int, dirs *plan.DirTable, opt Options) (*Copier, error) {
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
	c.ctx, c.cancel = context.WithCancelCause(ctx)
	context.AfterFunc(c.ctx, func() { c.stopped.Store(true) })
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

// fatal errors stop the job: the destination is full, read-only or broken.
func isFatal(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EROFS)
}

// setFatal stops the copier with err (the first such error is kept).
func (c *Copier) setFatal(err error) {
	c.cancel(err)
	c.stopped.Store(true)
}

// stopping reports whether the copier is to stop at the next record.
func (c *Copier) stopping() bool { return c.stopped.Load() }

// Fatal returns why the copier stopped: a fatal error, or the cause its
// context ended with (job.ErrInterrupted on a signal); nil while it runs.
func (c *Copier) Fatal() error {
	if c.ctx.Err() == nil {
		return nil
	}
	return context.Cause(c.ctx)
}

func (c *Copier) fail(dir uint32, name []byte, err error) {
	if isFatal(err) {
		c.setFatal(fmt.Errorf("%s: %w", msg.Quote(c.relOf(dir, name)), err))
		return
	}
	c.Stats.Errors.Add(1)
	c.opt.OnError(c.relOf(dir, name), err)
}

// relOf is the path of name in directory dir, relative to the tree's
// root, for messages; a Maker has no directory table: its caller gives the
// path of what it makes.
func (c *Copier) relOf(dir uint32, name []byte) string {
	if c.dirs == nil {
		return c.rel
	}
	return c.dirs.Rel(dir, name)
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
