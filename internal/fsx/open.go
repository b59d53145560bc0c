package fsx

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// OpenNoAtime opens name relative to dirfd with flags, adding O_NOATIME so
// that reading the file or directory does not change its atime. O_NOATIME
// needs ownership (or CAP_FOWNER): on EPERM it opens without it.
func OpenNoAtime(dirfd int, name string, flags int) (int, error) {
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	return fd, err
}

// Readlink reads the target of the symlink name in dirfd into buf, grown
// as needed, and returns it (it aliases buf's storage).
func Readlink(dirfd int, name string, buf []byte) ([]byte, error) {
	size := max(cap(buf), 256)
	for {
		if cap(buf) < size {
			buf = make([]byte, size)
		}
		n, err := unix.Readlinkat(dirfd, name, buf[:size])
		if err != nil {
			return nil, err
		}
		if n < size {
			return buf[:n], nil
		}
		size *= 2
	}
}

// Futimens is utimensat(fd, NULL, ts, 0): it sets the times of the open
// file fd (any type, O_PATH fds excepted).
func Futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
