package main

// A seeded generator of rsnapshot-shaped repositories: daily.0 .. daily.{S-1},
// each a full tree, unchanged files hard-linked to the previous snapshot (as
// rsnapshot's cp -al / rsync --link-dest make them), with a daily change
// rate: files edited (a new inode), added and deleted, a directory renamed.

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// Spec of a generated repository.
type Spec struct {
	Snapshots int     // S
	Files     int     // files per snapshot (about)
	Hosts     int     // top-level directories
	Fanout    int     // subdirectories per level
	Depth     int     // directory levels below a host
	Edit      float64 // share of files edited per day
	Add       float64 // share of files added per day
	Delete    float64 // share of files deleted per day
	Symlinks  float64 // share of entries that are symlinks
	Sparse    float64 // share of files that are sparse
	Seed      int64
}

var sizes = map[string]Spec{
	// CI smoke test.
	"small": {Snapshots: 5, Files: 2000, Hosts: 2, Fanout: 4, Depth: 2, Edit: 0.03, Add: 0.01, Delete: 0.005, Symlinks: 0.02, Sparse: 0.001, Seed: 1},
	// About 1M paths, 20 snapshots.
	"1m": {Snapshots: 20, Files: 50000, Hosts: 4, Fanout: 6, Depth: 3, Edit: 0.02, Add: 0.01, Delete: 0.005, Symlinks: 0.02, Sparse: 0.001, Seed: 2},
	// About 2M paths.
	"medium": {Snapshots: 20, Files: 100000, Hosts: 4, Fanout: 8, Depth: 3, Edit: 0.02, Add: 0.01, Delete: 0.005, Symlinks: 0.02, Sparse: 0.001, Seed: 3},
	// About 10M paths.
	"large": {Snapshots: 30, Files: 340000, Hosts: 8, Fanout: 8, Depth: 3, Edit: 0.02, Add: 0.01, Delete: 0.005, Symlinks: 0.02, Sparse: 0.001, Seed: 4},
}

type gfile struct {
	rel     string // path inside a snapshot
	symlink bool
}

// fileSize draws a size: mostly small files, some medium, a few large.
func fileSize(rng *rand.Rand) int {
	switch r := rng.Float64(); {
	case r < 0.60:
		return rng.Intn(4096)
	case r < 0.93:
		return 4096 + rng.Intn(28<<10)
	case r < 0.995:
		return 32<<10 + rng.Intn(480<<10)
	default:
		return 1<<20 + rng.Intn(7<<20)
	}
}

type generator struct {
	spec  Spec
	rng   *rand.Rand
	buf   []byte
	dirs  []string // leaf directories (relative)
	files map[string]*gfile
	next  int
	base  time.Time
	// counters
	paths, inodes int64
	bytes         int64
}

func (g *generator) newName(dir string) string {
	g.next++
	return filepath.Join(dir, fmt.Sprintf("f%07d", g.next))
}

// writeFile creates a regular (possibly sparse) file or a symlink.
func (g *generator) writeFile(abs string, f *gfile, day int) error {
	g.inodes++
	if f.symlink {
		if err := os.Symlink(fmt.Sprintf("../%s/target-%d", filepath.Base(filepath.Dir(abs)), g.rng.Intn(1000)), abs); err != nil {
			return err
		}
		return nil
	}
	fd, err := unix.Open(abs, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if g.rng.Float64() < g.spec.Sparse {
		// A sparse image: 16 MiB apparent, a few data extents.
		for k := 0; k < 3; k++ {
			n := 4096 * (1 + g.rng.Intn(16))
			g.rng.Read(g.buf[:n])
			unix.Pwrite(fd, g.buf[:n], int64(g.rng.Intn(15))<<20)
			g.bytes += int64(n)
		}
		unix.Ftruncate(fd, 16<<20)
	} else {
		n := fileSize(g.rng)
		for n > 0 {
			k := min(n, len(g.buf))
			g.rng.Read(g.buf[:k])
			if _, err := unix.Write(fd, g.buf[:k]); err != nil {
				unix.Close(fd)
				return err
			}
			g.bytes += int64(k)
			n -= k
		}
	}
	t := unix.NsecToTimespec(g.base.Add(time.Duration(day)*24*time.Hour + time.Duration(g.rng.Intn(86400))*time.Second).UnixNano())
	unix.Close(fd)
	return unix.UtimesNanoAt(unix.AT_FDCWD, abs, []unix.Timespec{t, t}, unix.AT_SYMLINK_NOFOLLOW)
}

// create adds n new files in random directories of the snapshot at root,
// writing them in path order.
func (g *generator) create(root string, n, day int) error {
	fresh := make([]*gfile, n)
	for i := range fresh {
		d := g.dirs[g.rng.Intn(len(g.dirs))]
		fresh[i] = &gfile{rel: g.newName(d), symlink: g.rng.Float64() < g.spec.Symlinks}
		g.files[fresh[i].rel] = fresh[i]
	}
	sort.Slice(fresh, func(i, j int) bool { return fresh[i].rel < fresh[j].rel })
	for _, f := range fresh {
		if err := g.writeFile(filepath.Join(root, f.rel), f, day); err != nil {
			return err
		}
	}
	return nil
}

// Generate builds the repository under root and returns its path and inode
// counts.
func Generate(root string, spec Spec, progress func(string)) (paths, inodes, bytes int64, err error) {
	g := &generator{spec: spec, rng: rand.New(rand.NewSource(spec.Seed)), buf: make([]byte, 1<<20), files: map[string]*gfile{}, base: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	// Directory skeleton of the oldest snapshot.
	var walk func(prefix string, level int)
	walk = func(prefix string, level int) {
		if level == spec.Depth {
			g.dirs = append(g.dirs, prefix)
			return
		}
		for i := 0; i < spec.Fanout; i++ {
			walk(filepath.Join(prefix, fmt.Sprintf("d%d", i)), level+1)
		}
	}
	for h := 0; h < spec.Hosts; h++ {
		walk(fmt.Sprintf("host%02d", h), 0)
	}
	oldest := spec.Snapshots - 1
	snap := func(i int) string { return filepath.Join(root, fmt.Sprintf("daily.%d", i)) }
	for _, d := range g.dirs {
		if err := os.MkdirAll(filepath.Join(snap(oldest), d), 0o755); err != nil {
			return 0, 0, 0, err
		}
	}
	// Files are created directory by directory, as rsync (or cp) fills a
	// snapshot, so that inode numbers follow the directories as they do in
	// a real repository.
	if err := g.create(snap(oldest), spec.Files, 0); err != nil {
		return 0, 0, 0, err
	}
	g.paths += int64(len(g.files))
	// Newer snapshots.
	for s := oldest - 1; s >= 0; s-- {
		if progress != nil {
			progress(fmt.Sprintf("snapshot daily.%d (%d paths so far)", s, g.paths))
		}
		day := oldest - s
		prev, cur := snap(s+1), snap(s)
		// A directory renamed today (its files keep their inodes).
		ren := g.rng.Intn(len(g.dirs))
		oldDir := g.dirs[ren]
		newDir := oldDir + fmt.Sprintf("-r%d", day)
		g.dirs[ren] = newDir
		for _, d := range g.dirs {
			if err := os.MkdirAll(filepath.Join(cur, d), 0o755); err != nil {
				return 0, 0, 0, err
			}
		}
		names := make([]string, 0, len(g.files))
		for rel := range g.files {
			names = append(names, rel)
		}
		sort.Strings(names)
		for _, rel := range names {
			f := g.files[rel]
			newRel := rel
			if filepath.Dir(rel) == oldDir {
				newRel = filepath.Join(newDir, filepath.Base(rel))
			}
			if newRel != rel {
				delete(g.files, rel)
				f.rel = newRel
				g.files[newRel] = f
			}
			r := g.rng.Float64()
			switch {
			case r < spec.Delete:
				delete(g.files, newRel)
				continue
			case r < spec.Delete+spec.Edit:
				if err := g.writeFile(filepath.Join(cur, newRel), f, day); err != nil {
					return 0, 0, 0, err
				}
			default:
				if err := os.Link(filepath.Join(prev, rel), filepath.Join(cur, newRel)); err != nil {
					return 0, 0, 0, err
				}
			}
			g.paths++
		}
		n := int(spec.Add * float64(spec.Files))
		if err := g.create(cur, n, day); err != nil {
			return 0, 0, 0, err
		}
		g.paths += int64(n)
	}
	var dirs int64
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs++
		}
		return nil
	})
	return g.paths + dirs, g.inodes, g.bytes, nil
}
