package copier

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
)

// Maker makes one inode at a time with the copier's methods (data once,
// holes kept, reflink, copy_file_range, O_DIRECT or sendfile; owner, mode,
// xattrs, ACLs and times; a file that changes while it is copied is copied
// again), for a caller that walks its own paths: hlcp sync. Not safe for
// concurrent use.
type Maker struct {
	c *Copier
	w *worker
}

// NewMaker returns a Maker from the tree at srcRoot to the tree at
// dstRoot (open directory fds, owned by the caller). opt.OnError and
// opt.OnWarn get the per-path failures (with the caller's path for each
// Make) and the once-per-kind warnings of the metadata.
func NewMaker(ctx context.Context, srcRoot, dstRoot int, opt Options) (*Maker, error) {
	var ss, ds unix.Stat_t
	if err := unix.Fstat(srcRoot, &ss); err != nil {
		return nil, err
	}
	if err := unix.Fstat(dstRoot, &ds); err != nil {
		return nil, err
	}
	if opt.OnError == nil {
		opt.OnError = func(string, error) {}
	}
	if opt.OnWarn == nil {
		opt.OnWarn = func(string, string) {}
	}
	c := &Copier{opt: opt, srcRoot: srcRoot, dstRoot: dstRoot, srcDev: ss.Dev, dstDev: ds.Dev, caps: fsx.NewCaps()}
	c.ctx, c.cancel = context.WithCancelCause(ctx)
	context.AfterFunc(c.ctx, func() { c.stopped.Store(true) })
	w := c.newWorker(new(progress.Counters), &prefetcher{c: c})
	return &Maker{c: c, w: w}, nil
}

// Close releases the Maker.
func (m *Maker) Close() {
	m.w.close()
	m.c.cancel(nil)
}

// Stats are what the Maker made.
func (m *Maker) Stats() *Stats { return &m.c.Stats }

// errDstReplaced is a destination entry that is no longer the inode the
// caller saw: its metadata is left alone.
var errDstReplaced = errors.New("replaced in DST since the scan: left alone")

// ErrChanged is the error of a source file that kept changing while it
// was copied (its copy is left, with the times of before the copy).
var ErrChanged = errChanged

// Make creates dname in dpfd as a copy of the source entry sname in spfd,
// which must still be the inode (dev, ino) of type typ that the caller's
// scan saw; rel names it in messages. It returns the source's stat as
// copied, and whether the copy lacks some of the source's metadata (an
// xattr, an ACL, an owner the destination refused: already reported). A
// failure leaves nothing at dname, but for ErrChanged and fatal errors
// (a full or read-only destination).
func (m *Maker) Make(spfd int, sname string, dev, ino uint64, typ uint8, dpfd int, dname, rel string) (st unix.Stat_t, metaBad bool, err error) {
	m.c.rel = rel
	m.w.metaBad = false
	src := plan.Entry{Dev: dev, Ino: ino, Type: typ, Name: []byte(sname)}
	st, err = m.w.make(spfd, dpfd, src, dname, -1)
	if err != nil && !errors.Is(err, errChanged) && !isFatal(err) {
		unix.Unlinkat(dpfd, dname, 0)
	}
	if err == nil {
		m.c.Stats.Groups.Add(1)
	}
	return st, m.w.metaBad, err
}

// FixMeta gives DST's entry dname in dpfd, which must still be the inode
// (ddev, dino), the metadata of the source entry sname in spfd, which
// must still be the inode (dev, ino): owner, mode, xattrs and ACLs (DST's
// others removed), times. rel names it in messages. (Where DST's
// directory belongs to another user, that user could have put another
// inode at dname, a hard link to a file of someone else's: it is not
// chowned.)
func (m *Maker) FixMeta(spfd int, sname string, dev, ino uint64, dpfd int, dname string, ddev, dino uint64, rel string) error {
	m.c.rel = rel
	var st, dst unix.Stat_t
	if err := unix.Fstatat(spfd, sname, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("lstat: %w", err)
	}
	if st.Dev != dev || st.Ino != ino {
		return fmt.Errorf("replaced since the scan")
	}
	src := plan.Entry{Dev: dev, Ino: ino, Type: fsx.TypeOfMode(st.Mode), Name: []byte(sname)}
	// DST's xattrs and ACLs that the source lacks go first: removing an
	// ACL after the chmod could leave the mask in the group bits.
	if src.Type != fsx.TypeReg {
		if err := unix.Fstatat(dpfd, dname, &dst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("lstat in DST: %w", err)
		}
		if dst.Dev != ddev || dst.Ino != dino {
			return errDstReplaced
		}
		if err := m.w.x.RemoveExtraPath(fsx.ProcPath(spfd, sname), fsx.ProcPath(dpfd, dname)); err != nil {
			return err
		}
		m.w.setMetaAt(spfd, dpfd, dname, &st, src)
		return nil
	}
	sfd, err := m.c.openSource(spfd, src.Name)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer unix.Close(sfd)
	dfd, err := unix.Openat(dpfd, dname, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open in DST: %w", err)
	}
	defer unix.Close(dfd)
	if err := unix.Fstat(dfd, &dst); err != nil {
		return fmt.Errorf("stat in DST: %w", err)
	}
	if dst.Dev != ddev || dst.Ino != dino {
		return errDstReplaced
	}
	if err := m.w.x.RemoveExtraFd(sfd, dfd); err != nil {
		return err
	}
	m.w.setMeta(dfd, sfd, &st, src)
	return nil
}

// FixDir gives the destination directory dfd the metadata of the source
// directory sfd (both open for reading): owner, xattrs and ACLs (DST's
// others removed), mode, times. rel names it in messages.
func (m *Maker) FixDir(sfd, dfd int, rel string) error {
	m.c.rel = rel
	// Only what differs is set (a sync fixes every directory whose
	// entries changed, mostly for its times), but the times always.
	var st, dst unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return err
	}
	if err := unix.Fstat(dfd, &dst); err != nil {
		return err
	}
	chowned := false
	if m.c.opt.Owner && (st.Uid != dst.Uid || st.Gid != dst.Gid) {
		if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
			m.c.metaFail(0, nil, "chown", err)
		}
		chowned = true
	}
	sx, _ := unix.Flistxattr(sfd, nil)
	dx, _ := unix.Flistxattr(dfd, nil)
	if sx != 0 {
		if err := m.w.x.CopyFd(sfd, dfd, m.c.xattrErr); err != nil {
			return err
		}
	}
	if dx != 0 {
		if err := m.w.x.RemoveExtraFd(sfd, dfd); err != nil {
			return err
		}
	}
	// (A chown may clear the setgid bit, and an ACL set the mode.)
	if chowned || sx != 0 || dx != 0 || st.Mode&07777 != dst.Mode&07777 {
		if err := unix.Fchmod(dfd, st.Mode&07777); err != nil {
			m.c.metaFail(0, nil, "chmod", err)
		}
	}
	return futimens(dfd, []unix.Timespec{st.Atim, st.Mtim})
}
