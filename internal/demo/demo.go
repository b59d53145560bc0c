// Package demo builds a small rsnapshot-shaped repository that exercises
// what hlcp preserves: hard links across snapshots, a symlink, a hard-linked
// symlink, a sparse file, an xattr, a read-only directory.
package demo

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Spec of the demo tree.
type Spec struct {
	Snapshots int // daily.0 .. daily.N-1
	Hosts     int // top-level host directories per snapshot
	Files     int // files per host
	Seed      int64
}

// DefaultSpec is what `hlcp demo` builds: a few thousand paths.
var DefaultSpec = Spec{Snapshots: 6, Hosts: 3, Files: 150, Seed: 1}

// Notes lists what Build made, for the demo's printout.
type Notes struct {
	Paths, Snapshots int
	Skipped          []string // features the filesystem refused
}

func write(p string, data []byte, mtime time.Time) error {
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return err
	}
	return os.Chtimes(p, mtime, mtime)
}

// Build creates root/daily.0 .. daily.{N-1} (daily.{N-1} the oldest). Each
// newer snapshot hard-links the previous one's unchanged files (like
// rsnapshot's cp -al / rsync --link-dest) and changes a few.
func Build(root string, s Spec) (Notes, error) {
	var n Notes
	rng := rand.New(rand.NewSource(s.Seed))
	base := time.Date(2026, 1, 1, 0, 0, 0, 123456789, time.UTC)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return n, err
	}
	oldest := filepath.Join(root, fmt.Sprintf("daily.%d", s.Snapshots-1))
	var readonly []string
	// The oldest snapshot: full files.
	for h := 0; h < s.Hosts; h++ {
		host := filepath.Join(oldest, fmt.Sprintf("host%d", h))
		for _, d := range []string{"etc", "home/alice", "var/log"} {
			if err := os.MkdirAll(filepath.Join(host, d), 0o755); err != nil {
				return n, err
			}
		}
		for f := 0; f < s.Files; f++ {
			size := rng.Intn(8192)
			if f%50 == 0 {
				size = 256 << 10
			}
			data := make([]byte, size)
			rng.Read(data)
			dir := []string{"etc", "home/alice", "var/log"}[f%3]
			if err := write(filepath.Join(host, dir, fmt.Sprintf("file%03d", f)), data, base.Add(time.Duration(f)*time.Minute)); err != nil {
				return n, err
			}
		}
		if err := os.Symlink("file001", filepath.Join(host, "home/alice", "link-to-file001")); err != nil {
			return n, err
		}
		// A sparse file: 32 MiB apparent, two 4 KiB extents.
		sp, err := os.Create(filepath.Join(host, "var", "disk.img"))
		if err != nil {
			return n, err
		}
		blk := make([]byte, 4096)
		rng.Read(blk)
		sp.WriteAt(blk, 1<<20)
		sp.WriteAt(blk, 20<<20)
		sp.Truncate(32 << 20)
		sp.Close()
		// A read-only directory with a file in it.
		ro := filepath.Join(host, "readonly")
		os.Mkdir(ro, 0o755)
		write(filepath.Join(ro, "frozen.txt"), []byte("cannot be changed\n"), base)
		readonly = append(readonly, ro)
	}
	for _, ro := range readonly {
		os.Chmod(ro, 0o555)
	}
	if err := unix.Setxattr(filepath.Join(oldest, "host0", "etc", "file000"), "user.comment", []byte("kept by hlcp"), 0); err != nil {
		n.Skipped = append(n.Skipped, fmt.Sprintf("xattr (%v)", err))
	}
	// Newer snapshots: link everything, then change ~5% of the files.
	for i := s.Snapshots - 2; i >= 0; i-- {
		prev := filepath.Join(root, fmt.Sprintf("daily.%d", i+1))
		cur := filepath.Join(root, fmt.Sprintf("daily.%d", i))
		if err := linkTree(prev, cur); err != nil {
			return n, err
		}
		for h := 0; h < s.Hosts; h++ {
			for f := 0; f < s.Files; f++ {
				if rng.Intn(20) != 0 {
					continue
				}
				dir := []string{"etc", "home/alice", "var/log"}[f%3]
				p := filepath.Join(cur, fmt.Sprintf("host%d", h), dir, fmt.Sprintf("file%03d", f))
				os.Remove(p)
				data := make([]byte, rng.Intn(8192))
				rng.Read(data)
				if err := write(p, data, base.Add(time.Duration(s.Snapshots-i)*24*time.Hour)); err != nil {
					return n, err
				}
			}
		}
		// In each snapshot, one extra hard link of a symlink inside it.
		os.Link(filepath.Join(cur, "host0/home/alice/link-to-file001"), filepath.Join(cur, "host0/home/alice/same-symlink"))
	}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			n.Paths++
		}
		return err
	})
	n.Snapshots = s.Snapshots
	// Directory times last, deepest first, so that they are not the build time.
	var dirs []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		t := base.Add(time.Duration(i) * time.Second)
		unix.UtimesNanoAt(unix.AT_FDCWD, dirs[i], []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}, unix.AT_SYMLINK_NOFOLLOW)
	}
	return n, err
}

// linkTree makes dst a tree of directories like src whose files and
// symlinks are hard links to src's.
func linkTree(src, dst string) error {
	type dirMode struct {
		path string
		mode os.FileMode
	}
	var modes []dirMode
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if fi.IsDir() {
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			if fi.Mode().Perm() != 0o755 {
				modes = append(modes, dirMode{target, fi.Mode().Perm()})
			}
			return nil
		}
		return os.Link(p, target)
	})
	for _, m := range modes {
		os.Chmod(m.path, m.mode)
	}
	return err
}

// Rotate is one night of the repository at root, as rsnapshot does it:
// the oldest snapshot goes, every daily.N becomes daily.N+1, and a new
// daily.0 is daily.1 hard-linked, with about 5% of its files edited (new
// inodes), a few new, and a few deleted. It returns how many of each.
func Rotate(root string, s Spec, night int) (edited, added, deleted int, err error) {
	rng := rand.New(rand.NewSource(s.Seed + int64(night)*1000))
	snap := func(i int) string { return filepath.Join(root, fmt.Sprintf("daily.%d", i)) }
	oldest := snap(s.Snapshots - 1)
	filepath.Walk(oldest, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(p, 0o755) // its read-only directories, so that it can go
		}
		return nil
	})
	if err := os.RemoveAll(oldest); err != nil {
		return 0, 0, 0, err
	}
	for i := s.Snapshots - 2; i >= 0; i-- {
		if err := os.Rename(snap(i), snap(i+1)); err != nil {
			return 0, 0, 0, err
		}
	}
	cur := snap(0)
	if err := linkTree(snap(1), cur); err != nil {
		return 0, 0, 0, err
	}
	when := time.Now()
	for h := 0; h < s.Hosts; h++ {
		for f := 0; f < s.Files; f++ {
			dir := []string{"etc", "home/alice", "var/log"}[f%3]
			p := filepath.Join(cur, fmt.Sprintf("host%d", h), dir, fmt.Sprintf("file%03d", f))
			switch r := rng.Intn(100); {
			case r < 5:
				os.Remove(p)
				data := make([]byte, rng.Intn(8192))
				rng.Read(data)
				if err := write(p, data, when); err != nil {
					return edited, added, deleted, err
				}
				edited++
			case r < 6:
				if os.Remove(p) == nil {
					deleted++
				}
			}
		}
		data := make([]byte, 1000+rng.Intn(4000))
		rng.Read(data)
		if err := write(filepath.Join(cur, fmt.Sprintf("host%d", h), "var/log", fmt.Sprintf("night%d.log", night)), data, when); err != nil {
			return edited, added, deleted, err
		}
		added++
	}
	return edited, added, deleted, nil
}
