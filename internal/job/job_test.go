package job

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestInside(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(filepath.Join(src, "a"), 0o755)
	os.Symlink(src, filepath.Join(base, "alias"))
	cases := []struct {
		p    string
		want bool
	}{
		{src, true},
		{filepath.Join(src, "a"), true},
		{filepath.Join(src, "a", "new", "deeper"), true},
		{filepath.Join(base, "alias", "x"), true}, // through a symlink
		{filepath.Join(base, "other"), false},
		{base, false},
		{src + "2", false},
	}
	for _, c := range cases {
		got, err := inside(c.p, src)
		if err != nil || got != c.want {
			t.Errorf("inside(%s) = %v, %v; want %v", c.p, got, err, c.want)
		}
	}
}

// TestDstExists: DST is a directory (not a symlink) or a new name in an
// existing directory; anything else is a usage error.
func TestDstExists(t *testing.T) {
	base := t.TempDir()
	os.Mkdir(filepath.Join(base, "dir"), 0o755)
	os.WriteFile(filepath.Join(base, "file"), nil, 0o644)
	os.Symlink("dir", filepath.Join(base, "link"))
	os.Symlink("nowhere", filepath.Join(base, "dangling"))
	for _, c := range []struct {
		p      string
		exists bool
		err    string // in the usage error; "" = none
	}{
		{"new", false, ""},
		{"dir", true, ""},
		{"dir/new", false, ""},
		{"link", false, "is a symlink"},
		{"dangling", false, "is a symlink"},
		{"file", false, "is not a directory"},
		{"no/parent", false, "its parent directory"},
		{"link/new", false, ""}, // only DST itself must not be a symlink: its parent is the user's path
		{"file/new", false, "not a directory"},
	} {
		p := filepath.Join(base, c.p)
		got, err := dstExists(p)
		var ue *UsageError
		switch {
		case c.err == "" && (err != nil || got != c.exists):
			t.Errorf("dstExists(%s) = %v, %v; want %v", c.p, got, err, c.exists)
		case c.err != "" && (!errors.As(err, &ue) || !strings.Contains(err.Error(), c.err) || got):
			t.Errorf("dstExists(%s) = %v, %v; want a usage error with %q", c.p, got, err, c.err)
		}
	}
}

// TestEmptyDir: a directory is empty when it holds nothing but the entry
// named except.
func TestEmptyDir(t *testing.T) {
	many := make([]string, 200)
	for i := range many {
		many[i] = fmt.Sprintf("f%03d", i)
	}
	for _, c := range []struct {
		name    string
		entries []string
		except  string
		want    bool
	}{
		{"empty", nil, "", true},
		{"empty, with except", nil, StateName, true},
		{"only the state", []string{StateName}, StateName, true},
		{"only the state, --state given", []string{StateName}, "", false},
		{"the state and a file", []string{StateName, "a"}, StateName, false},
		{"a file", []string{"a"}, StateName, false},
		{"a dot file", []string{".a"}, "", false},
		{"many", many, "", false},
		{"many, except one", many, "f150", false},
		{"only the excepted name", []string{"f150"}, "f150", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, e := range c.entries {
				if err := os.Mkdir(filepath.Join(dir, e), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			for range 2 { // the fd is not used up by a call
				got, err := emptyDir(fd, c.except)
				if err != nil || got != c.want {
					t.Errorf("emptyDir = %v, %v; want %v", got, err, c.want)
				}
			}
		})
	}
	if _, err := emptyDir(-1, ""); err == nil {
		t.Errorf("emptyDir of a bad fd: no error")
	}
}
