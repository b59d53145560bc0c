package mirror

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/msg"
)

// deleteExtras is the fourth pass: the paths only DST has go, after every
// source inode that could reuse one of them (a rename) has linked it, and
// so do the names set aside. A directory goes with everything in it (its
// entries are paths only DST has too, which come after it in path order).
// Where SRC could not be read whole (a directory it could not list), no
// path only DST has is deleted, as rsync does after an I/O error: what
// DST has below such a directory shows as extra, but SRC may still have
// it. The names set aside still go: SRC has another type at their paths.
func (m *Mirror) deleteExtras(c *collector) error {
	ctr := m.o.Progress.Phase("delete", "paths", "")
	defer m.o.Progress.End()
	var gone string  // the last directory removed whole (or that failed to be)
	var goneBad bool // it failed: what is below it was not deleted
	each := eachPathRecord
	if n := m.st.Compared.SrcUnread; n > 0 && c.nExtras > 0 {
		m.fail(".", fmt.Sprintf("SRC could not be read whole (%d paths, listed above): none of the %d paths only DST has was deleted", n, c.nExtras))
		each = func(*spool, func(byte, []byte) error) error { return nil }
	}
	err := each(c.extras, func(typ byte, p []byte) error {
		path := string(p)
		below := typ&underReplaced != 0
		if gone != "" && strings.HasPrefix(path, gone+"/") {
			// Deleted with it, or kept with it where that failed (a
			// mount point below it: nothing below it is deleted one by
			// one either).
			ctr.Done.Add(1)
			if goneBad {
				return nil
			}
			m.st.Deleted++
			if m.o.DryRun {
				m.o.Action("delete", path, "")
			}
			return nil
		}
		ctr.Done.Add(1)
		m.st.Deleted++
		if m.o.DryRun {
			m.o.Action("delete", path, "")
			return nil
		}
		isDir, err := m.remove([]byte(path))
		if below && goneWithDir(err) {
			// Its directory was replaced by another type of file: it
			// was renamed aside whole, and goes with the names set aside.
			return nil
		}
		if isDir {
			gone, goneBad = path, err != nil
		}
		if err != nil {
			m.st.Deleted--
			return m.fatalOr([]byte(path), fmt.Errorf("delete: %w", err))
		}
		return m.touched([]byte(path))
	})
	if err != nil {
		return err
	}
	if m.o.DryRun {
		return nil
	}
	return eachRecord(m.trashed, func(b []byte) error {
		if _, err := m.remove(b); err != nil {
			return m.fatalOr(b, fmt.Errorf("delete what was set aside: %w", err))
		}
		return nil
	})
}

// goneWithDir tells the errors of a path whose parent is no longer a
// directory: it was replaced, the old directory renamed aside.
func goneWithDir(err error) bool {
	return errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, fsx.ErrSymlink)
}

// remove deletes path in DST, a directory with everything in it; it
// reports whether it was a directory. A path already gone is no error.
func (m *Mirror) remove(path []byte) (isDir bool, err error) {
	pfd, name, err := m.dsts.parent(path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, unlinkIn(pfd, name, 0)
	}
	mnt, err := mountOf(pfd)
	if err != nil {
		return false, err
	}
	m.dsts.forget(string(path))
	return true, removeTree(pfd, name, mnt)
}

// mount says which mount a directory is on: its mount ID, or where the
// kernel has none (before Linux 5.8) its device. A bind mount of a
// directory of the same filesystem has the same device, not the same
// mount.
type mount struct{ id, dev uint64 }

func mountOf(fd int) (mount, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &stx); err != nil {
		return mount{}, err
	}
	m := mount{dev: unix.Mkdev(stx.Dev_major, stx.Dev_minor)}
	if stx.Mask&unix.STATX_MNT_ID != 0 {
		m.id = stx.Mnt_id
	}
	return m, nil
}

// errMountPoint is a directory to delete that is another filesystem's
// root (a mount point in DST): nothing in it is deleted.
var errMountPoint = errors.New("a mount point (another filesystem): not deleted")

// removeTree removes directory name of pfd (on mount mnt) and everything
// in it, one component at a time from fds, never through a symlink nor
// into another mount. A directory that is not writable is made so first
// (what is in it is being deleted). It carries on past a mount point (or
// another error) below it, then returns the first error, leaving the
// directories that hold what it kept.
func removeTree(pfd int, name string, mnt mount) error {
	fd, err := fsx.OpenBeneath(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if here, err := mountOf(fd); err != nil {
		return err
	} else if here != mnt {
		return errMountPoint
	}
	var first error
	for {
		names, err := f.Readdirnames(256)
		for _, n := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return err
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				err = removeTree(fd, n, mnt)
			} else {
				err = unlinkIn(fd, n, 0)
			}
			if err != nil && !errors.Is(err, unix.ENOENT) && first == nil {
				first = fmt.Errorf("%s: %w", msg.Quote(n), err)
			}
		}
		if err != nil || len(names) == 0 {
			break
		}
	}
	if first != nil {
		return first
	}
	return unlinkIn(pfd, name, unix.AT_REMOVEDIR)
}

// unlinkIn unlinks name in dirfd; where the directory forbids it (a
// read-only directory, for a user that owns it), it is made writable for
// its owner first: its final mode comes from SRC at the end.
func unlinkIn(dirfd int, name string, flags int) error {
	err := unix.Unlinkat(dirfd, name, flags)
	if !errors.Is(err, unix.EACCES) {
		return err
	}
	if wfd, werr := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); werr == nil {
		var st unix.Stat_t
		if unix.Fstat(wfd, &st) == nil {
			unix.Fchmod(wfd, st.Mode&07777|0o700)
		}
		unix.Close(wfd)
		err = unix.Unlinkat(dirfd, name, flags)
	}
	return err
}
