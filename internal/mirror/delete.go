package mirror

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
)

// deleteExtras is the fourth pass: the paths only DST has go, after every
// source inode that could reuse one of them (a rename) has linked it, and
// so do the names set aside. A directory goes with everything in it (its
// entries are paths only DST has too, which come after it in path order).
func (m *Mirror) deleteExtras(c *collector) error {
	ctr := m.o.Progress.Phase("delete", "paths", "")
	defer m.o.Progress.End()
	var gone string // the last directory removed whole
	err := eachPathRecord(c.extras, func(typ byte, p []byte) error {
		path := string(p)
		below := typ&underReplaced != 0
		if gone != "" && strings.HasPrefix(path, gone+"/") {
			m.st.Deleted++
			if m.o.DryRun {
				m.o.Action("delete", path, "")
			}
			ctr.Done.Add(1)
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
		if err != nil {
			return m.fatalOr([]byte(path), fmt.Errorf("delete: %w", err))
		}
		if isDir {
			gone = path
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
	m.dsts.forget(string(path))
	return true, removeTree(pfd, name)
}

// removeTree removes directory name of pfd and everything in it, one
// component at a time from fds, never through a symlink. A directory that
// is not writable is made so first (what is in it is being deleted).
func removeTree(pfd int, name string) error {
	fd, err := fsx.OpenBeneath(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
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
				err = removeTree(fd, n)
			} else {
				err = unlinkIn(fd, n, 0)
			}
			if err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
		if err != nil || len(names) == 0 {
			break
		}
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
