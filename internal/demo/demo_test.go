package demo

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestBuild checks the demo tree has what the demo promises: hard links
// across snapshots, a hard-linked symlink, a sparse file, a read-only
// directory.
func TestBuild(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	n, err := Build(src, Spec{Snapshots: 3, Hosts: 2, Files: 20, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if n.Paths < 100 || n.Snapshots != 3 {
		t.Fatalf("notes %+v", n)
	}
	defer filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	files, linked := 0, 0
	filepath.Walk(filepath.Join(src, "daily.0"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			files++
			if fi.Sys().(*syscall.Stat_t).Nlink > 1 {
				linked++
			}
		}
		return nil
	})
	if linked*2 < files {
		t.Errorf("only %d of %d files are hard-linked across snapshots", linked, files)
	}
	var l syscall.Stat_t
	syscall.Lstat(filepath.Join(src, "daily.0/host0/home/alice/same-symlink"), &l)
	if l.Mode&syscall.S_IFMT != syscall.S_IFLNK || l.Nlink < 2 {
		t.Error("no hard-linked symlink")
	}
	var sp syscall.Stat_t
	syscall.Lstat(filepath.Join(src, "daily.0/host0/var/disk.img"), &sp)
	if sp.Blocks*512 >= sp.Size {
		t.Error("disk.img is not sparse")
	}
	fi, err := os.Stat(filepath.Join(src, "daily.0/host0/readonly"))
	if err != nil || fi.Mode().Perm() != 0o555 {
		t.Errorf("readonly dir: %v %v", fi, err)
	}
}
