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

// TestRotate checks one night of the demo repository: the oldest snapshot
// gone, the others one up, and a new daily.0 that shares daily.1's
// unchanged inodes and has its own for the edited files.
func TestRotate(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	spec := Spec{Snapshots: 3, Hosts: 2, Files: 60, Seed: 1}
	if _, err := Build(src, spec); err != nil {
		t.Fatal(err)
	}
	defer filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	ino := func(p string) uint64 {
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return 0
		}
		return st.Ino
	}
	was1 := ino(filepath.Join(src, "daily.1/host0/etc/file000"))
	was0 := ino(filepath.Join(src, "daily.0/host0/etc/file000"))
	edited, added, deleted, err := Rotate(src, spec, 1)
	if err != nil {
		t.Fatal(err)
	}
	if edited == 0 || added != spec.Hosts {
		t.Errorf("edited %d, added %d, deleted %d", edited, added, deleted)
	}
	if _, err := os.Lstat(filepath.Join(src, "daily.3")); err == nil {
		t.Error("daily.3 exists: the oldest snapshot was not dropped")
	}
	if got := ino(filepath.Join(src, "daily.2/host0/etc/file000")); got != was1 {
		t.Errorf("daily.1 did not become daily.2 (inode %d, want %d)", got, was1)
	}
	if got := ino(filepath.Join(src, "daily.1/host0/etc/file000")); got != was0 {
		t.Errorf("daily.0 did not become daily.1 (inode %d, want %d)", got, was0)
	}
	// daily.0: each file is daily.1's inode, or a new one where edited.
	same, other := 0, 0
	filepath.Walk(filepath.Join(src, "daily.0"), func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(filepath.Join(src, "daily.0"), p)
		if ino(filepath.Join(src, "daily.1", rel)) == ino(p) {
			same++
		} else {
			other++
		}
		return nil
	})
	if other != edited+added || same == 0 {
		t.Errorf("daily.0: %d files linked to daily.1, %d not; want %d not (%d edited, %d added)", same, other, edited+added, edited, added)
	}
	fi, err := os.Stat(filepath.Join(src, "daily.0/host0/readonly"))
	if err != nil || fi.Mode().Perm() != 0o555 {
		t.Errorf("readonly dir in the new daily.0: %v %v", fi, err)
	}
}
