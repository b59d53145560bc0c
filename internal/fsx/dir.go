package fsx

import (
	"errors"
	"fmt"
	"hlcp/internal/msg"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Dir is a directory opened once and then used only relative to its fd:
// every name is one component, opened with O_NOFOLLOW, and new files are
// created with O_EXCL. Renaming or replacing the directory's path after
// it was opened (a symlink swapped in by whoever can write its parent)
// changes nothing for a Dir: it keeps working on the directory it opened.
// Files are created mode 0600 and directories 0700.
type Dir struct {
	fd   int
	path string // for messages only
}

// OpenDir opens the directory at path. The last component must not be a
// symlink.
func OpenDir(path string) (*Dir, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: msg.Quote(path), Err: notDirErr(err)}
	}
	return &Dir{fd: fd, path: path}, nil
}

// DirAt opens the directory name in the directory fd parent (which the
// caller keeps); path names it in messages.
func DirAt(parent int, name, path string) (*Dir, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		// O_DIRECTORY|O_NOFOLLOW on a symlink gives ELOOP or, on some
		// kernels, ENOTDIR: look at what the name is.
		var st unix.Stat_t
		if errors.Is(err, unix.ENOTDIR) && unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			err = unix.ELOOP
		}
		return nil, &os.PathError{Op: "open", Path: msg.Quote(path), Err: notDirErr(err)}
	}
	return &Dir{fd: fd, path: path}, nil
}

// ErrSymlink is the error of a name that is a symlink where hlcp wanted a
// directory or a file: it never follows one.
var ErrSymlink = errors.New("is a symlink (never followed)")

// notDirErr turns the errno of an O_NOFOLLOW open of a symlink (ELOOP)
// into ErrSymlink.
func notDirErr(err error) error {
	if errors.Is(err, unix.ELOOP) {
		return ErrSymlink
	}
	return err
}

// ErrBadName is a name that is not one path component.
var ErrBadName = errors.New("not a single path component")

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 255 {
		return fmt.Errorf("%q: %w", name, ErrBadName)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return fmt.Errorf("%q: %w", name, ErrBadName)
		}
	}
	return nil
}

// Fd is the directory's fd (owned by d).
func (d *Dir) Fd() int { return d.fd }

// Path is the path the directory was opened by, for messages.
func (d *Dir) Path() string { return d.path }

// Join names name in d, for messages.
func (d *Dir) Join(name string) string { return filepath.Join(d.path, name) }

// Close closes the directory.
func (d *Dir) Close() error {
	if d == nil || d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

// Stat is fstat of the directory itself.
func (d *Dir) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstat(d.fd, &st)
	return st, err
}

// pathErr is an error about name in d; the path in it is quoted where it
// needs to be (see Quote), for messages that stay one line.
func (d *Dir) pathErr(op, name string, err error) error {
	return &os.PathError{Op: op, Path: msg.Quote(d.Join(name)), Err: err}
}

// Create makes a new regular file name in d (O_EXCL: it must not exist;
// nothing is ever opened through a symlink), mode 0600, open for reading
// and writing.
func (d *Dir) Create(name string) (*os.File, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.fd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, d.pathErr("create", name, err)
	}
	return os.NewFile(uintptr(fd), d.Join(name)), nil
}

// CreateReplacing is Create where a leftover file of the same name (a
// regular file, or a symlink, which is unlinked itself and never
// followed) is removed first. Only for names that belong to d's owner.
func (d *Dir) CreateReplacing(name string) (*os.File, error) {
	f, err := d.Create(name)
	if errors.Is(err, unix.EEXIST) {
		if err := d.Remove(name); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, err
		}
		f, err = d.Create(name)
	}
	return f, err
}

// Open opens the regular file name in d for reading.
func (d *Dir) Open(name string) (*os.File, error) {
	return d.openFile(name, unix.O_RDONLY)
}

// OpenRW opens the existing regular file name in d for reading and
// writing.
func (d *Dir) OpenRW(name string) (*os.File, error) {
	return d.openFile(name, unix.O_RDWR)
}

// OpenAppend opens name in d for appending, creating it (0600) if needed.
func (d *Dir) OpenAppend(name string) (*os.File, error) {
	return d.openFile(name, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT)
}

func (d *Dir) openFile(name string, flags int) (*os.File, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	// O_NONBLOCK: a fifo planted under the name must not block the open.
	fd, err := unix.Openat(d.fd, name, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, d.pathErr("open", name, notDirErr(err))
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, d.pathErr("open", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, d.pathErr("open", name, errors.New("not a regular file"))
	}
	// Back to blocking I/O (it changes nothing for a regular file, but
	// os.File must not take it for a pollable one).
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, d.pathErr("open", name, err)
	}
	return os.NewFile(uintptr(fd), d.Join(name)), nil
}

// ReadFile reads the whole regular file name in d, up to max bytes.
func (d *Dir) ReadFile(name string, max int64) ([]byte, error) {
	f, err := d.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, d.pathErr("read", name, fmt.Errorf("larger than %d bytes", max))
	}
	return b, nil
}

// Lstat is fstatat(name, AT_SYMLINK_NOFOLLOW).
func (d *Dir) Lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := checkName(name); err != nil {
		return st, err
	}
	if err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, d.pathErr("lstat", name, err)
	}
	return st, nil
}

// Mkdir makes the new directory name in d (mode 0700) and opens it.
func (d *Dir) Mkdir(name string) (*Dir, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if err := unix.Mkdirat(d.fd, name, 0o700); err != nil {
		return nil, d.pathErr("mkdir", name, err)
	}
	return d.Sub(name)
}

// Sub opens the existing directory name in d.
func (d *Dir) Sub(name string) (*Dir, error) {
	return DirAt(d.fd, name, d.Join(name))
}

// Rename renames old to new within d (replacing new).
func (d *Dir) Rename(old, new string) error {
	if err := checkName(old); err != nil {
		return err
	}
	if err := checkName(new); err != nil {
		return err
	}
	if err := unix.Renameat(d.fd, old, d.fd, new); err != nil {
		return &os.LinkError{Op: "rename", Old: msg.Quote(d.Join(old)), New: msg.Quote(d.Join(new)), Err: err}
	}
	return nil
}

// Remove unlinks the file (never a directory) name in d.
func (d *Dir) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := unix.Unlinkat(d.fd, name, 0); err != nil {
		return d.pathErr("remove", name, err)
	}
	return nil
}

// Rmdir removes the empty directory name in d.
func (d *Dir) Rmdir(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := unix.Unlinkat(d.fd, name, unix.AT_REMOVEDIR); err != nil {
		return d.pathErr("rmdir", name, err)
	}
	return nil
}

// Names lists the names in d (without . and ..).
func (d *Dir) Names() ([]string, error) {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: msg.Quote(d.path), Err: err}
	}
	f := os.NewFile(uintptr(fd), d.path)
	defer f.Close()
	return f.Readdirnames(-1)
}

// Sync makes d's entries durable (fsync of the directory).
func (d *Dir) Sync() error {
	if err := unix.Fsync(d.fd); err != nil {
		return &os.PathError{Op: "fsync", Path: msg.Quote(d.path), Err: err}
	}
	return nil
}

// Statfs is fstatfs of the directory.
func (d *Dir) Statfs() (unix.Statfs_t, error) {
	var fs unix.Statfs_t
	err := unix.Fstatfs(d.fd, &fs)
	return fs, err
}

// RemoveOwn removes the subdirectory name of d, which a job made for its
// own files, and the files in it whose names own says are the job's. It
// never follows a symlink, and never removes a name that own refuses or a
// subdirectory: those are not the job's to delete, so they stay (with the
// directory), and the error names them. A missing directory is no error.
func (d *Dir) RemoveOwn(name string, own func(string) bool) error {
	sub, err := d.Sub(name)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer sub.Close()
	names, err := sub.Names()
	if err != nil {
		return err
	}
	var foreign []string
	for _, n := range names {
		if !own(n) {
			foreign = append(foreign, n)
			continue
		}
		if err := sub.Remove(n); err != nil && !errors.Is(err, unix.ENOENT) {
			foreign = append(foreign, n)
		}
	}
	if len(foreign) > 0 {
		return fmt.Errorf("%s holds entries hlcp did not make, left as they are: %s", msg.Quote(sub.path), msg.QuoteList(foreign, 5))
	}
	if err := d.Rmdir(name); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}
