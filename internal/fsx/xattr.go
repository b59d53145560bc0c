package fsx

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Xattrs copies extended attributes (user.*, trusted.*, security.*, and the
// system.posix_acl_* ACLs, which are xattrs on Linux). One per worker: it owns
// its buffers.
type Xattrs struct {
	names []byte
	val   []byte
}

// XattrError is a failure to set one attribute on the destination.
type XattrError struct {
	Name string
	Err  error
}

func (e *XattrError) Error() string { return fmt.Sprintf("set xattr %q: %v", e.Name, e.Err) }
func (e *XattrError) Unwrap() error { return e.Err }

// Kind classifies the error for "report once per kind" summaries: the
// namespace of the attribute and the errno.
func (e *XattrError) Kind() string {
	ns := e.Name
	if i := bytes.IndexByte([]byte(ns), '.'); i >= 0 {
		ns = ns[:i]
	}
	if ns == "system" {
		ns = e.Name
	}
	return ns + ": " + e.Err.Error()
}

// ProcPath names the entry name of directory fd dirfd through /proc, so that
// path-only syscalls (l*xattr) reach it without resolving a long path and
// without following a symlink in the last component.
func ProcPath(dirfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

type xops struct {
	list func(dst []byte) (int, error)
	get  func(name string, dst []byte) (int, error)
	set  func(name string, val []byte) error
}

// CopyFd copies every xattr of sfd to dfd. Failures to set an attribute are
// passed to onErr (which may be nil) and do not stop the others; the error
// returned is about reading the source.
func (x *Xattrs) CopyFd(sfd, dfd int, onErr func(*XattrError)) error {
	return x.copy(xops{
		list: func(b []byte) (int, error) { return unix.Flistxattr(sfd, b) },
		get:  func(n string, b []byte) (int, error) { return unix.Fgetxattr(sfd, n, b) },
		set:  func(n string, v []byte) error { return unix.Fsetxattr(dfd, n, v, 0) },
	}, onErr)
}

// CopyPath is CopyFd for entries that cannot be opened (symlinks, devices,
// fifos, sockets): both are given as paths that are not followed in their
// last component, typically ProcPath(dirfd, name).
func (x *Xattrs) CopyPath(src, dst string, onErr func(*XattrError)) error {
	return x.copy(xops{
		list: func(b []byte) (int, error) { return unix.Llistxattr(src, b) },
		get:  func(n string, b []byte) (int, error) { return unix.Lgetxattr(src, n, b) },
		set:  func(n string, v []byte) error { return unix.Lsetxattr(dst, n, v, 0) },
	}, onErr)
}

// CopyPathToFd copies the xattrs of the entry at path src (not followed in
// its last component, typically ProcPath(dirfd, name)) to the open dfd:
// the source needs no open of its own.
func (x *Xattrs) CopyPathToFd(src string, dfd int, onErr func(*XattrError)) error {
	return x.copy(xops{
		list: func(b []byte) (int, error) { return unix.Llistxattr(src, b) },
		get:  func(n string, b []byte) (int, error) { return unix.Lgetxattr(src, n, b) },
		set:  func(n string, v []byte) error { return unix.Fsetxattr(dfd, n, v, 0) },
	}, onErr)
}

func noXattrs(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP)
}

func (x *Xattrs) copy(o xops, onErr func(*XattrError)) error {
	return x.each(o, func(name string, val []byte) error {
		if err := o.set(name, val); err != nil && onErr != nil {
			onErr(&XattrError{Name: name, Err: err})
		}
		return nil
	})
}

// each calls fn with every attribute's name and value (valid during the
// call). A filesystem without xattr support has none.
func (x *Xattrs) each(o xops, fn func(name string, val []byte) error) error {
	if x.names == nil {
		x.names = make([]byte, 4096)
		x.val = make([]byte, 4096)
	}
	n, err := grow(&x.names, o.list)
	if err != nil {
		if noXattrs(err) {
			return nil
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	list := x.names[:n]
	for len(list) > 0 {
		i := bytes.IndexByte(list, 0)
		if i < 0 {
			i = len(list)
		}
		name := string(list[:i])
		if i < len(list) {
			list = list[i+1:]
		} else {
			list = nil
		}
		if name == "" {
			continue
		}
		vn, err := grow(&x.val, func(b []byte) (int, error) { return o.get(name, b) })
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				continue // removed meanwhile
			}
			return fmt.Errorf("get xattr %q: %w", name, err)
		}
		if err := fn(name, x.val[:vn]); err != nil {
			return err
		}
	}
	return nil
}

// grow calls f with *buf, growing *buf on ERANGE (up to 64 MiB: the kernel's
// limit is 64 KiB per value and per list on most filesystems).
func grow(buf *[]byte, f func([]byte) (int, error)) (int, error) {
	for {
		n, err := f(*buf)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, unix.ERANGE) || len(*buf) >= 64<<20 {
			return 0, err
		}
		sz, err2 := f(nil)
		if err2 != nil {
			return 0, err
		}
		if sz <= len(*buf) {
			sz = 2 * len(*buf)
		}
		*buf = make([]byte, sz)
	}
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// ReadFd returns the xattrs of an open file, sorted by name. A filesystem
// without xattr support has none.
func (x *Xattrs) ReadFd(fd int) ([]Xattr, error) {
	return x.read(xops{
		list: func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		get:  func(n string, b []byte) (int, error) { return unix.Fgetxattr(fd, n, b) },
	})
}

// ReadPath is ReadFd for a path whose last component is not followed.
func (x *Xattrs) ReadPath(path string) ([]Xattr, error) {
	return x.read(xops{
		list: func(b []byte) (int, error) { return unix.Llistxattr(path, b) },
		get:  func(n string, b []byte) (int, error) { return unix.Lgetxattr(path, n, b) },
	})
}

func (x *Xattrs) read(o xops) ([]Xattr, error) {
	var out []Xattr
	err := x.each(o, func(name string, val []byte) error {
		out = append(out, Xattr{Name: name, Value: append([]byte(nil), val...)})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// RemoveExtraFd removes from dfd every xattr (and ACL) that sfd does not
// have, but for a security label (security.selinux) that the
// destination's own policy gives every file.
func (x *Xattrs) RemoveExtraFd(sfd, dfd int) error {
	return x.removeExtra(
		xops{list: func(b []byte) (int, error) { return unix.Flistxattr(sfd, b) }, get: func(n string, b []byte) (int, error) { return unix.Fgetxattr(sfd, n, b) }},
		xops{list: func(b []byte) (int, error) { return unix.Flistxattr(dfd, b) }, get: func(n string, b []byte) (int, error) { return unix.Fgetxattr(dfd, n, b) }},
		func(n string) error { return unix.Fremovexattr(dfd, n) })
}

// RemoveExtraPath is RemoveExtraFd for entries given as paths whose last
// component is not followed (typically ProcPath(dirfd, name)).
func (x *Xattrs) RemoveExtraPath(src, dst string) error {
	return x.removeExtra(
		xops{list: func(b []byte) (int, error) { return unix.Llistxattr(src, b) }, get: func(n string, b []byte) (int, error) { return unix.Lgetxattr(src, n, b) }},
		xops{list: func(b []byte) (int, error) { return unix.Llistxattr(dst, b) }, get: func(n string, b []byte) (int, error) { return unix.Lgetxattr(dst, n, b) }},
		func(n string) error { return unix.Lremovexattr(dst, n) })
}

func (x *Xattrs) removeExtra(s, d xops, remove func(string) error) error {
	have, err := x.read(s)
	if err != nil {
		return err
	}
	extra, err := x.read(d)
	if err != nil {
		return err
	}
	i := 0
	for _, e := range extra {
		for i < len(have) && have[i].Name < e.Name {
			i++
		}
		if i < len(have) && have[i].Name == e.Name || e.Name == "security.selinux" {
			continue
		}
		if err := remove(e.Name); err != nil && !noXattrs(err) {
			return fmt.Errorf("remove xattr %q: %w", e.Name, err)
		}
	}
	return nil
}

// listxattrat(2) (Linux 6.13) lists the xattr names of an entry of a
// directory fd, the last component not followed, without opening the entry
// or resolving a /proc path. Older kernels say ENOSYS once; it is not
// tried again.
var noListxattrat atomic.Bool

// NoXattrsAt reports whether entry name of dirfd (not followed) has no
// xattrs (and so no ACLs) at all, in one syscall: none is true only when
// that is certain. ok is false when the kernel cannot tell this way (no
// listxattrat, or another error): the caller reads them the usual way.
func NoXattrsAt(dirfd int, name string) (none, ok bool) {
	if noListxattrat.Load() {
		return false, false
	}
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return false, false
	}
	n, _, errno := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(unix.AT_SYMLINK_NOFOLLOW), 0, 0, 0)
	switch {
	case errno == unix.ENOSYS:
		noListxattrat.Store(true)
		return false, false
	case errno == unix.EOPNOTSUPP:
		return true, true // a filesystem without xattrs
	case errno != 0:
		return false, false
	}
	return n == 0, true
}
