package fsx

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNoXattrsAt: listxattrat, where the kernel has it, tells a file
// without xattrs from one with, and does not follow a symlink.
func TestNoXattrsAt(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"plain", "with"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Setxattr(filepath.Join(dir, "with"), "user.k", []byte("v"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	if err := os.Symlink("with", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	if _, ok := NoXattrsAt(dfd, "plain"); !ok {
		t.Skip("no listxattrat (Linux < 6.13): the callers read xattrs the usual way")
	}
	for _, c := range []struct {
		name     string
		none, ok bool
	}{{"plain", true, true}, {"with", false, true}, {"link", true, true}, {"missing", false, false}} {
		none, ok := NoXattrsAt(dfd, c.name)
		if none != c.none || ok != c.ok {
			t.Errorf("%s: none %v ok %v, want %v %v", c.name, none, ok, c.none, c.ok)
		}
	}
}
