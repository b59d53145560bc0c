package copier

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
)

// MakeDirs creates every directory of the plan with id >= from under the
// destination root, parents first, owner-writable (final modes come in
// Finish). done is called after each directory. Existing directories are
// accepted (resume).
func (c *Copier) MakeDirs(from uint32, done func()) error {
	if from == 0 {
		from = 1
	}
	return c.dirs.Scan(from, func(d *plan.Dir) error {
		if c.stopping() {
			return c.Fatal()
		}
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
// parents), and to the root only when root is true. done is called after
// each directory with its id; an error from it (a failed checkpoint), a
// fatal error or the end of the copier's context stops Finish.
func (c *Copier) Finish(below uint32, root bool, done func(id uint32) error) error {
	var x fsx.Xattrs
	return c.dirs.ScanReverse(below, func(d *plan.Dir) error {
		if c.stopping() {
			return c.Fatal()
		}
		if d.Flags&plan.DirGone == 0 && (d.ID != 0 || root) {
			c.finishDir(d, &x)
			if err := c.Fatal(); err != nil {
				return err
			}
		}
		if done != nil {
			return done(d.ID)
		}
		return nil
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
