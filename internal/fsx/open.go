package fsx

import (
	"errors"
	"os"
	"strconv"
	"strings"

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

// Umask returns the process's file mode creation mask, read from
// /proc/self/status (reading it with umask(2) would change it for a
// moment under every other thread), or 07777 where it cannot be read.
func Umask() uint32 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o7777
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Umask:"); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return uint32(n)
			}
		}
	}
	return 0o7777
}
