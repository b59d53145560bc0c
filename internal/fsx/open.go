package fsx

import (
	"errors"

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
