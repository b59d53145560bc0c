package testutil

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// SnapshotSpec describes an rsnapshot-shaped repository. Zero values of
// Snapshots, Files, DirsPerLevel, Depth and MaxSize select defaults (3, 1000,
// 4, 3, 4096); ChangeRate 0 means no edits, Seed 0 is a valid seed.
type SnapshotSpec struct {
	Snapshots    int     // number of snapshots daily.0 (newest) .. daily.{Snapshots-1} (oldest)
	Files        int     // regular files in the oldest snapshot
	DirsPerLevel int     // subdirectories per directory
	Depth        int     // levels of subdirectories below each snapshot root
	ChangeRate   float64 // fraction of files edited (new inode) per newer snapshot; ChangeRate/4 deleted and Files*ChangeRate/4 added
	Seed         int64
	MaxSize      int // file sizes are uniform in 0..MaxSize
}

func (sp *SnapshotSpec) defaults() {
	if sp.Snapshots <= 0 {
		sp.Snapshots = 3
	}
	if sp.Files <= 0 {
		sp.Files = 1000
	}
	if sp.DirsPerLevel <= 0 {
		sp.DirsPerLevel = 4
	}
	if sp.Depth <= 0 {
		sp.Depth = 3
	}
	if sp.MaxSize <= 0 {
		sp.MaxSize = 4096
	}
	if sp.ChangeRate < 0 {
		sp.ChangeRate = 0
	}
}

type snapFile struct {
	id   int    // stable identity (name)
	dir  int    // index into dirs
	ver  int    // content version; a new version is a new inode
	size int    // size of the current version
	perm uint32 // 0644 or 0600
	// born is the index of the snapshot (in build order, 0 = oldest) that
	// created the current version.
	born int
}

func (f *snapFile) name() string { return "f" + strconv.Itoa(f.id) + ".dat" }

// BuildSnapshots creates dir/daily.0 .. dir/daily.{S-1}: daily.{S-1} is the
// oldest, a full tree of spec.Files files spread over DirsPerLevel^1 ..
// DirsPerLevel^Depth nested directories (files live at every level); each
// newer snapshot hard-links unchanged files to the previous snapshot (like
// rsync --link-dest / cp -al), has ChangeRate of the files edited (written as
// a new inode), ChangeRate/4 deleted and Files*ChangeRate/4 added. Every
// snapshot also has "stable-link", a symlink inode hard-linked through all
// snapshots, and "latest", a fresh symlink per snapshot. File contents,
// sizes, modes, mtimes and directory mtimes derive from the seed, so two
// builds with the same spec are identical (inode numbers aside).
//
// It returns the number of paths created below dir (snapshot roots,
// directories, files, symlinks) and the number of distinct inodes.
func BuildSnapshots(t testing.TB, dir string, spec SnapshotSpec) (paths, inodes int) {
	t.Helper()
	spec.defaults()
	rng := rand.New(rand.NewPCG(uint64(spec.Seed), 0x686c6370))

	// Directory layout shared by all snapshots; parents precede children.
	dirs := []string{""}
	depthOf := []int{0}
	for i := 0; i < len(dirs); i++ {
		if depthOf[i] == spec.Depth {
			continue
		}
		for j := 0; j < spec.DirsPerLevel; j++ {
			name := fmt.Sprintf("d%d-%d", depthOf[i]+1, j)
			if dirs[i] != "" {
				name = dirs[i] + "/" + name
			}
			dirs = append(dirs, name)
			depthOf = append(depthOf, depthOf[i]+1)
		}
	}

	// A pool of random bytes; a file's content is a 16-byte header with its
	// id and version followed by pool bytes at a pseudo-random offset.
	pool := make([]byte, 1<<20+spec.MaxSize)
	var seed32 [32]byte
	binary.LittleEndian.PutUint64(seed32[:], uint64(spec.Seed))
	rand.NewChaCha8(seed32).Read(pool)

	nextID := 0
	newFile := func(born int) *snapFile {
		f := &snapFile{id: nextID, dir: rng.IntN(len(dirs)), size: rng.IntN(spec.MaxSize + 1), perm: 0o644, born: born}
		if rng.IntN(10) == 0 {
			f.perm = 0o600
		}
		nextID++
		return f
	}
	live := make([]*snapFile, 0, spec.Files)
	for i := 0; i < spec.Files; i++ {
		live = append(live, newFile(0))
	}

	top, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("BuildSnapshots: %v", err)
	}
	defer unix.Close(top)
	fail := func(what, p string, err error) {
		t.Helper()
		t.Fatalf("BuildSnapshots: %s %q: %v", what, p, err)
	}
	ts := func(ns int64) []unix.Timespec {
		return []unix.Timespec{unix.NsecToTimespec(ns + 500_000_000), unix.NsecToTimespec(ns)}
	}

	prevSnap, snap := -1, -1 // fds of the previous (older) and the current snapshot root
	defer func() {
		if prevSnap >= 0 {
			unix.Close(prevSnap)
		}
		if snap >= 0 && snap != prevSnap {
			unix.Close(snap)
		}
	}()
	for b := 0; b < spec.Snapshots; b++ {
		snapName := "daily." + strconv.Itoa(spec.Snapshots-1-b)
		if b > 0 {
			// Evolve: edit, delete and add files.
			kept := live[:0]
			for _, f := range live {
				r := rng.Float64()
				switch {
				case r < spec.ChangeRate:
					f.ver++
					f.born = b
					if rng.IntN(2) == 0 {
						f.size = rng.IntN(spec.MaxSize + 1)
					}
					kept = append(kept, f)
				case r < spec.ChangeRate*1.25:
					// deleted
				default:
					kept = append(kept, f)
				}
			}
			live = kept
			add := int(float64(spec.Files)*spec.ChangeRate/4 + 0.5)
			for i := 0; i < add; i++ {
				live = append(live, newFile(b))
			}
		}
		sort.Slice(live, func(i, j int) bool {
			if live[i].dir != live[j].dir {
				return live[i].dir < live[j].dir
			}
			return live[i].id < live[j].id
		})

		if err := unix.Mkdirat(top, snapName, 0o755); err != nil {
			fail("mkdir", snapName, err)
		}
		snap, err = unix.Openat(top, snapName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			fail("open", snapName, err)
		}
		if err := unix.Fchmod(snap, 0o755); err != nil {
			fail("chmod", snapName, err)
		}
		paths++
		inodes++
		// Directories first (parents precede children), then the files of
		// all directories in parallel: every decision was made above, so
		// the result does not depend on scheduling.
		for _, dp := range dirs[1:] {
			if err := unix.Mkdirat(snap, dp, 0o755); err != nil {
				fail("mkdir", snapName+"/"+dp, err)
			}
			if err := unix.Fchmodat(snap, dp, 0o755, 0); err != nil {
				fail("chmod", snapName+"/"+dp, err)
			}
			paths++
			inodes++
		}
		type job struct {
			di    int
			files []*snapFile
		}
		var jobs []job
		for lo := 0; lo < len(live); {
			hi := lo
			for hi < len(live) && live[hi].dir == live[lo].dir {
				hi++
			}
			jobs = append(jobs, job{live[lo].dir, live[lo:hi]})
			for _, f := range live[lo:hi] {
				paths++
				if f.born == b {
					inodes++
				}
			}
			lo = hi
		}
		var (
			mu       sync.Mutex
			firstErr error
			next     atomic.Int64
			wg       sync.WaitGroup
		)
		workers := min(runtime.GOMAXPROCS(0)*2, 8)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 16+spec.MaxSize)
				for {
					i := int(next.Add(1) - 1)
					if i >= len(jobs) {
						return
					}
					j := jobs[i]
					if err := writeSnapDir(snap, prevSnap, dirs[j.di], j.files, b, buf, pool); err != nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = fmt.Errorf("%s/%s: %w", snapName, dirs[j.di], err)
						}
						mu.Unlock()
						next.Store(int64(len(jobs)))
						return
					}
				}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			t.Fatalf("BuildSnapshots: %v", firstErr)
		}

		// Symlinks.
		if b == 0 {
			if err := unix.Symlinkat("d1-0/../d1-0", snap, "stable-link"); err != nil {
				fail("symlink", "stable-link", err)
			}
			if err := unix.UtimesNanoAt(snap, "stable-link", []unix.Timespec{unix.NsecToTimespec(4102444800_000000001), unix.NsecToTimespec(1_650_000_000_000000001)}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				fail("utimes", "stable-link", err)
			}
			inodes++
		} else if err := unix.Linkat(prevSnap, "stable-link", snap, "stable-link", 0); err != nil {
			fail("link", "stable-link", err)
		}
		paths++
		target := "no-files"
		if len(live) > 0 {
			f := live[rng.IntN(len(live))]
			target = f.name()
			if dirs[f.dir] != "" {
				target = dirs[f.dir] + "/" + target
			}
		}
		if err := unix.Symlinkat(target, snap, "latest"); err != nil {
			fail("symlink", "latest", err)
		}
		if err := unix.UtimesNanoAt(snap, "latest", []unix.Timespec{unix.NsecToTimespec(4102444800_000000002 + int64(b)), unix.NsecToTimespec(int64(1_700_000_000+b*86400) * 1e9)}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			fail("utimes", "latest", err)
		}
		paths++
		inodes++

		// Directory times, deepest first, then the snapshot root.
		for di := len(dirs) - 1; di >= 1; di-- {
			mt := int64(1_700_000_000+b*86400+di)*1e9 + 123
			if err := unix.UtimesNanoAt(snap, dirs[di], ts(mt), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				fail("utimes", dirs[di], err)
			}
		}
		if err := unix.UtimesNanoAt(snap, ".", ts(int64(1_700_000_000+b*86400)*1e9+7), 0); err != nil {
			fail("utimes", snapName, err)
		}

		if prevSnap >= 0 {
			unix.Close(prevSnap)
		}
		prevSnap = snap
	}
	return paths, inodes
}

// snapContent fills buf with the content of f: a 16-byte header with its id
// and version followed by pool bytes at an offset derived from both (the
// header counts towards the size).
func snapContent(f *snapFile, buf, pool []byte) []byte {
	b := buf[:16+f.size]
	binary.LittleEndian.PutUint64(b, uint64(f.id))
	binary.LittleEndian.PutUint64(b[8:], uint64(f.ver))
	off := int((uint64(f.id)*0x9E3779B97F4A7C15 + uint64(f.ver)*0xBF58476D1CE4E5B9) % (1 << 20))
	copy(b[16:], pool[off:off+f.size])
	return b[:f.size]
}

// writeSnapDir populates directory dp of snapshot number b (build order) below
// the snapshot root snap: files unchanged since the previous snapshot prevSnap
// are hard-linked, the others written.
func writeSnapDir(snap, prevSnap int, dp string, files []*snapFile, b int, buf, pool []byte) error {
	cur, prev := snap, prevSnap
	var err error
	if dp != "" {
		if cur, err = unix.Openat(snap, dp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return err
		}
		defer unix.Close(cur)
		if prevSnap >= 0 {
			if prev, err = unix.Openat(prevSnap, dp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
				return fmt.Errorf("previous snapshot: %w", err)
			}
			defer unix.Close(prev)
		}
	}
	for _, f := range files {
		name := f.name()
		if f.born < b {
			if err := unix.Linkat(prev, name, cur, name, 0); err != nil {
				return fmt.Errorf("link %s: %w", name, err)
			}
			continue
		}
		fd, err := unix.Openat(cur, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, f.perm)
		if err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		data := snapContent(f, buf, pool)
		for len(data) > 0 {
			n, err := unix.Write(fd, data)
			if err != nil {
				unix.Close(fd)
				return fmt.Errorf("write %s: %w", name, err)
			}
			data = data[n:]
		}
		if err := unix.Fchmod(fd, f.perm); err != nil {
			unix.Close(fd)
			return fmt.Errorf("chmod %s: %w", name, err)
		}
		unix.Close(fd)
		mt := int64(1_700_000_000+b*86400+f.id)*1e9 + int64(f.ver*1000+f.id%1000)
		ts := []unix.Timespec{unix.NsecToTimespec(mt + 500_000_000), unix.NsecToTimespec(mt)}
		if err := unix.UtimesNanoAt(cur, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("utimes %s: %w", name, err)
		}
	}
	return nil
}
