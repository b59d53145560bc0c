package job

import (
	"errors"
	"fmt"
	"hlcp/internal/msg"

	"os"
	"path/filepath"
	"syscall"
)

// UsageError is a bad argument, or a refusal to start: nothing was
// changed.
type UsageError struct {
	Msg string
	Err error // the cause, when a %w verb named one
}

func (e *UsageError) Error() string { return e.Msg }

// Unwrap gives the causes that %w verbs named (through the formatted
// error, which holds them).
func (e *UsageError) Unwrap() error { return e.Err }

// usagef formats a UsageError; a %w verb in format gives its cause.
func usagef(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	u := &UsageError{Msg: err.Error()}
	switch err.(type) {
	case interface{ Unwrap() error }, interface{ Unwrap() []error }:
		u.Err = err // holds what %w named
	}
	return u
}

// devIno of a path, following symlinks (used for the path the user gave).
func devIno(p string) (uint64, uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		return 0, 0, err
	}
	return st.Dev, st.Ino, nil
}

// checkSrc validates SRC: an existing directory, not a symlink.
func checkSrc(src string) error { return checkTree("SRC", src) }

// checkTree validates a tree argument (role names it in messages): an
// existing directory, not a symlink.
func checkTree(role, p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return usagef("%s %s does not exist", role, msg.Quote(p))
		}
		return usagef("%s %s: %w", role, msg.Quote(p), err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		t, _ := os.Readlink(p)
		return usagef("%s %s is a symlink (to %s); hlcp never follows symlinks: give the directory itself", role, msg.Quote(p), msg.Quote(t))
	}
	if !fi.IsDir() {
		return usagef("%s %s is not a directory (hlcp works on directory trees)", role, msg.Quote(p))
	}
	return nil
}

// realPath resolves the existing part of p through symlinks and appends
// the rest, so that ancestry can be compared.
func realPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	rest := ""
	cur := abs
	for {
		r, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return abs, nil
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// inside reports whether path p is src or lies below it, comparing
// (dev, ino) of p's ancestors with src's so that bind mounts and symlinked
// spellings do not hide it.
func inside(p, src string) (bool, error) {
	sd, si, err := devIno(src)
	if err != nil {
		return false, err
	}
	rp, err := realPath(p)
	if err != nil {
		return false, err
	}
	for cur := rp; ; {
		if d, i, err := devIno(cur); err == nil && d == sd && i == si {
			return true, nil
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return false, nil
		}
		cur = parent
	}
}
