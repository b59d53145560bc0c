package copier

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
)

// create makes a new destination inode at (dir, name) as a copy of the
// source path src (whose scan gave its dev, ino and type). sfd is src
// already open for reading, or -1; create closes it. It returns nil after
// reporting an error.
func (w *worker) create(src plan.Entry, dir uint32, name []byte, sfd int) *linkSrc {
	c := w.c
	if sfd >= 0 {
		defer unix.Close(sfd)
	}
	w.metaBad = false
	spfd, err := c.srcDirs.Acquire(src.Dir)
	if err != nil {
		c.fail(src.Dir, src.Name, fmt.Errorf("open source directory: %w", err))
		return nil
	}
	defer c.srcDirs.Release(src.Dir)
	dpfd, err := c.dstDirs.Acquire(dir)
	if err != nil {
		c.fail(dir, name, fmt.Errorf("open destination directory: %w", err))
		return nil
	}
	defer c.dstDirs.Release(dir)

	st, err := w.make(spfd, dpfd, src, string(name), sfd)
	if err != nil {
		if errors.Is(err, errChanged) {
			c.Stats.Changed.Add(1)
		}
		c.fail(src.Dir, src.Name, err)
		if !errors.Is(err, errChanged) {
			if !isFatal(err) {
				// Nothing must stay at the path that the group's links
				// would link to: a file left by an earlier run is not a
				// copy of what the source has now.
				unix.Unlinkat(dpfd, string(name), 0)
			}
			return nil
		}
	}
	c.Stats.Paths.Add(1)
	w.ctr.Paths.Add(1)
	return &linkSrc{dir: dir, name: append([]byte(nil), name...), src: plan.Entry{Dev: src.Dev, Ino: src.Ino, Dir: src.Dir, Type: src.Type, Name: append([]byte(nil), src.Name...)}, nlink: uint64(st.Nlink), size: st.Size,
		ctime: st.Ctim, changed: err != nil, metaBad: w.metaBad}
}

// make creates name in dpfd as a copy of the source entry src (its name
// in spfd; sfd is it already open, or -1), by type, with its metadata, and
// returns the source's stat. errChanged still leaves the copy there.
func (w *worker) make(spfd, dpfd int, src plan.Entry, name string, sfd int) (unix.Stat_t, error) {
	var st unix.Stat_t
	var err error
	switch src.Type {
	case fsx.TypeReg:
		err = w.copyFile(spfd, dpfd, sfd, src, name, &st)
	case fsx.TypeLnk:
		err = w.copySymlink(spfd, dpfd, src, name, &st)
	case fsx.TypeFifo, fsx.TypeSock, fsx.TypeChr, fsx.TypeBlk:
		err = w.copySpecial(spfd, dpfd, src, name, &st)
	default:
		err = fmt.Errorf("unsupported file type %d", src.Type)
	}
	return st, err
}

var errChanged = errors.New("changed while being copied (the copy may not match any single state of the file)")

// checkInode verifies that what a source path names now is the inode the
// scan saw there.
func checkInode(st *unix.Stat_t, e plan.Entry, devMap map[uint64]uint64) error {
	if d, ok := devMap[e.Dev]; ok {
		e.Dev = d
	}
	if st.Ino != e.Ino || st.Dev != e.Dev {
		return fmt.Errorf("replaced since the scan (inode %d:%d, now %d:%d)", e.Dev, e.Ino, st.Dev, st.Ino)
	}
	if t := fsx.TypeOfMode(st.Mode); t != e.Type {
		return fmt.Errorf("changed type since the scan (%s, now %s)", fsx.TypeName(e.Type), fsx.TypeName(t))
	}
	return nil
}

// unchangedWhileCopied reports whether two stats of a source file, before
// and after its data was copied, show the same size, mtime and ctime: the
// copy is of one state of the file.
func unchangedWhileCopied(a, b *unix.Stat_t) bool {
	return a.Size == b.Size && a.Mtim == b.Mtim && a.Ctim == b.Ctim
}

func vanished(err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("vanished since the scan: %w", err)
	}
	return err
}

// createFile makes name in dpfd exclusively, replacing what an interrupted
// run left there.
func createFile(dpfd int, name string, mode uint32) (int, error) {
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dpfd, name, flags, mode)
	if errors.Is(err, unix.EEXIST) {
		if err := unix.Unlinkat(dpfd, name, 0); err != nil {
			return -1, fmt.Errorf("replace existing: %w", err)
		}
		fd, err = unix.Openat(dpfd, name, flags, mode)
	}
	return fd, err
}

// copyFile copies the regular file src (open as sfd, which the caller
// closes, or -1 to open it here) to name in dpfd.
func (w *worker) copyFile(spfd, dpfd, sfd int, src plan.Entry, name string, st *unix.Stat_t) error {
	c := w.c
	if sfd < 0 {
		var err error
		sfd, err = c.openSource(spfd, src.Name)
		if err != nil {
			return fmt.Errorf("open: %w", vanished(err))
		}
		defer unix.Close(sfd)
	}
	if err := unix.Fstat(sfd, st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if err := checkInode(st, src, w.c.opt.SrcDevMap); err != nil {
		return err
	}
	var changed bool
	first := *st // the state the scan-time identity check saw
	for attempt := 0; ; attempt++ {
		dfd, err := createFile(dpfd, name, createMode(st.Mode))
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		sparse := st.Size > 0 && st.Blocks*512 < st.Size
		n, m, err := w.data.Copy(sfd, dfd, st.Size, sparse, st.Dev, c.dstDev)
		if err != nil && !errors.Is(err, fsx.ErrShort) {
			unix.Close(dfd)
			unix.Unlinkat(dpfd, name, 0) // no torn copy left behind
			return fmt.Errorf("copy data: %w", err)
		}
		var after unix.Stat_t
		if e2 := unix.Fstat(sfd, &after); e2 != nil {
			unix.Close(dfd)
			return fmt.Errorf("stat: %w", e2)
		}
		if err != nil || !unchangedWhileCopied(st, &after) {
			*st = after
			if attempt < c.opt.Retries {
				unix.Close(dfd)
				continue
			}
			changed = true
		}
		c.Stats.Bytes.Add(n)
		w.ctr.Bytes.Add(n)
		switch m {
		case fsx.MethodClone:
			c.Stats.Cloned.Add(1)
		case fsx.MethodCopyRange:
			c.Stats.CopyRange.Add(1)
		case fsx.MethodSendfile:
			c.Stats.Sendfile.Add(1)
		case fsx.MethodDirect:
			c.Stats.Direct.Add(1)
		case fsx.MethodReadWrite:
			c.Stats.ReadWrite.Add(1)
		}
		w.setMeta(dfd, sfd, st, src)
		if changed {
			// The copy may mix two states of the file: it gets the times
			// of the state before the copy, which the file no longer has,
			// so that nothing (a move's check, rsync's quick check) takes
			// it for a copy of the current file.
			futimens(dfd, []unix.Timespec{first.Atim, first.Mtim})
		}
		if err := unix.Close(dfd); err != nil {
			return fmt.Errorf("close: %w", err)
		}
		break
	}
	if changed {
		return errChanged
	}
	return nil
}

// setMeta gives the open destination file dfd the owner, xattrs, mode and
// times of the source (in that order: chown clears setuid bits and
// security.capability, chmod must follow it, and times come last). The
// new file is fstat'ed first: the chown is left out where it has the
// owner already, the chmod where it was created with its final mode (a
// fresh file has no setuid bit for the chown to clear), so the common
// case costs one call instead of two.
func (w *worker) setMeta(dfd, sfd int, st *unix.Stat_t, src plan.Entry) {
	c := w.c
	var now unix.Stat_t
	if err := unix.Fstat(dfd, &now); err != nil {
		now.Uid, now.Gid, now.Mode = ^uint32(0), ^uint32(0), ^uint32(0) // unknown: change both
	}
	if c.opt.Owner {
		if now.Uid != st.Uid || now.Gid != st.Gid {
			if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
				w.metaFail(src, "chown", err)
			}
			now.Mode = ^uint32(0) // a chown may clear setuid and setgid bits
		}
	} else {
		c.ownerWarn(st.Uid, st.Gid)
	}
	if err := w.x.CopyFd(sfd, dfd, w.xattrErr); err != nil {
		w.metaBad = true
		c.fail(src.Dir, src.Name, err)
	}
	if now.Mode&07777 != st.Mode&07777 {
		if err := unix.Fchmod(dfd, st.Mode&07777); err != nil {
			w.metaFail(src, "chmod", err)
		}
	}
	if err := futimens(dfd, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
		w.metaBad = true
		c.fail(src.Dir, src.Name, fmt.Errorf("set times: %w", err))
	}
}

// xattrErr is the copier's report of an xattr the destination refused,
// which also marks the inode's copy as lacking some of its metadata.
func (w *worker) xattrErr(e *fsx.XattrError) {
	w.metaBad = true
	w.c.xattrErr(e)
}

// metaFail reports a failed chown or chmod (see Copier.metaFail); one
// that is an error, not the destination's lack of owners or modes, marks
// the inode's copy as lacking some of its metadata.
func (w *worker) metaFail(src plan.Entry, op string, err error) {
	if !w.c.metaFail(src.Dir, src.Name, op, err) {
		w.metaBad = true
	}
}

// setMetaAt is setMeta for entries that cannot be opened (symlinks, device
// nodes, fifos, sockets): by name relative to their directory, never
// following a symlink.
func (w *worker) setMetaAt(spfd, dpfd int, name string, st *unix.Stat_t, src plan.Entry) {
	c := w.c
	if c.opt.Owner {
		if err := unix.Fchownat(dpfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			w.metaFail(src, "chown", err)
		}
	} else {
		c.ownerWarn(st.Uid, st.Gid)
	}
	if err := w.x.CopyPath(fsx.ProcPath(spfd, string(src.Name)), fsx.ProcPath(dpfd, name), w.xattrErr); err != nil {
		w.metaBad = true
		c.fail(src.Dir, src.Name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		err := unix.Fchmodat(dpfd, name, st.Mode&07777, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.EOPNOTSUPP) {
			err = chmodNoFollow(dpfd, name, st.Mode&07777)
		}
		if err != nil {
			w.metaFail(src, "chmod", err)
		}
	}
	if err := unix.UtimesNanoAt(dpfd, name, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		w.metaBad = true
		c.fail(src.Dir, src.Name, fmt.Errorf("set times: %w", err))
	}
}

// chmodNoFollow changes the mode of a device node, fifo or socket where the
// kernel has no fchmodat2: the node is opened with O_PATH|O_NOFOLLOW (which
// cannot open through a symlink swapped in meanwhile), checked, and changed
// through its /proc/self/fd link, which names that very inode.
func chmodNoFollow(dpfd int, name string, mode uint32) error {
	fd, err := unix.Openat(dpfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%s became a symlink", name)
	}
	return unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), mode)
}

func (w *worker) copySymlink(spfd, dpfd int, src plan.Entry, name string, st *unix.Stat_t) error {
	sname := string(src.Name)
	if err := unix.Fstatat(spfd, sname, st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("lstat: %w", vanished(err))
	}
	if err := checkInode(st, src, w.c.opt.SrcDevMap); err != nil {
		return err
	}
	t, err := fsx.Readlink(spfd, sname, w.lbuf)
	if err != nil {
		return fmt.Errorf("readlink: %w", vanished(err))
	}
	w.lbuf = t
	target := string(t)
	err = unix.Symlinkat(target, dpfd, name)
	if errors.Is(err, unix.EEXIST) {
		if err := unix.Unlinkat(dpfd, name, 0); err != nil {
			return fmt.Errorf("replace existing: %w", err)
		}
		err = unix.Symlinkat(target, dpfd, name)
	}
	if err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	w.setMetaAt(spfd, dpfd, name, st, src)
	return nil
}

func (w *worker) copySpecial(spfd, dpfd int, src plan.Entry, name string, st *unix.Stat_t) error {
	if err := unix.Fstatat(spfd, string(src.Name), st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("lstat: %w", vanished(err))
	}
	if err := checkInode(st, src, w.c.opt.SrcDevMap); err != nil {
		return err
	}
	mode := st.Mode & (unix.S_IFMT | 0o777)
	err := unix.Mknodat(dpfd, name, mode, int(st.Rdev))
	if errors.Is(err, unix.EEXIST) {
		if err := unix.Unlinkat(dpfd, name, 0); err != nil {
			return fmt.Errorf("replace existing: %w", err)
		}
		err = unix.Mknodat(dpfd, name, mode, int(st.Rdev))
	}
	if err != nil {
		return fmt.Errorf("mknod %s: %w", fsx.TypeName(src.Type), err)
	}
	w.setMetaAt(spfd, dpfd, name, st, src)
	return nil
}
