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
	sb := &snapBuilder{
		t:        t,
		spec:     spec,
		rng:      rand.New(rand.NewPCG(uint64(spec.Seed), 0x686c6370)),
		dirs:     snapDirs(spec),
		pool:     snapPool(spec),
		top:      -1,
		prevSnap: -1,
		snap:     -1,
	}
	sb.addFirstFiles()
	sb.openTop(dir)
	defer sb.close()
	for b := 0; b < spec.Snapshots; b++ {
		if b > 0 {
			sb.evolve(b)
		}
		sb.writeSnapshot(b)
	}
	return sb.paths, sb.inodes
}

// snapBuilder holds the state of one BuildSnapshots call.
type snapBuilder struct {
	t    testing.TB
	spec SnapshotSpec
	rng  *rand.Rand
	dirs []string // directory layout shared by all snapshots; parents precede children
	pool []byte   // random bytes the file contents are cut from

	nextID int         // id of the next new file
	live   []*snapFile // files of the snapshot being built

	top            int // fd of dir
	prevSnap, snap int // fds of the previous (older) and the current snapshot root

	paths, inodes int // counts returned by BuildSnapshots
}

// snapDirs returns the directory layout shared by all snapshots: "" (the
// snapshot root) followed by DirsPerLevel^1 .. DirsPerLevel^Depth nested
// directories, parents preceding children.
func snapDirs(spec SnapshotSpec) []string {
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
	return dirs
}

// snapPool returns a pool of random bytes derived from the seed; a file's
// content is a 16-byte header with its id and version followed by pool bytes
// at a pseudo-random offset (see snapContent).
func snapPool(spec SnapshotSpec) []byte {
	pool := make([]byte, 1<<20+spec.MaxSize)
	var seed32 [32]byte
	binary.LittleEndian.PutUint64(seed32[:], uint64(spec.Seed))
	rand.NewChaCha8(seed32).Read(pool)
	return pool
}

// newFile returns a new file born in snapshot number born (build order) with
// a random directory, size and mode.
func (sb *snapBuilder) newFile(born int) *snapFile {
	f := &snapFile{id: sb.nextID, dir: sb.rng.IntN(len(sb.dirs)), size: sb.rng.IntN(sb.spec.MaxSize + 1), perm: 0o644, born: born}
	if sb.rng.IntN(10) == 0 {
		f.perm = 0o600
	}
	sb.nextID++
	return f
}

// addFirstFiles creates the spec.Files files of the oldest snapshot.
func (sb *snapBuilder) addFirstFiles() {
	sb.live = make([]*snapFile, 0, sb.spec.Files)
	for i := 0; i < sb.spec.Files; i++ {
		sb.live = append(sb.live, sb.newFile(0))
	}
}

// openTop opens dir, below which the snapshots are created.
func (sb *snapBuilder) openTop(dir string) {
	sb.t.Helper()
	top, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		sb.t.Fatalf("BuildSnapshots: %v", err)
	}
	sb.top = top
}

// close closes the snapshot root fds and the fd of dir.
func (sb *snapBuilder) close() {
	if sb.prevSnap >= 0 {
		unix.Close(sb.prevSnap)
	}
	if sb.snap >= 0 && sb.snap != sb.prevSnap {
		unix.Close(sb.snap)
	}
	if sb.top >= 0 {
		unix.Close(sb.top)
	}
}

// fail aborts the test with a BuildSnapshots error about path p.
func (sb *snapBuilder) fail(what, p string, err error) {
	sb.t.Helper()
	sb.t.Fatalf("BuildSnapshots: %s %q: %v", what, p, err)
}

// evolve turns the file set of the previous snapshot into that of snapshot
// number b (build order): ChangeRate of the files are edited (new version and
// inode, possibly a new size), ChangeRate/4 deleted and Files*ChangeRate/4
// added.
func (sb *snapBuilder) evolve(b int) {
	spec := sb.spec
	kept := sb.live[:0]
	for _, f := range sb.live {
		r := sb.rng.Float64()
		switch {
		case r < spec.ChangeRate:
			f.ver++
			f.born = b
			if sb.rng.IntN(2) == 0 {
				f.size = sb.rng.IntN(spec.MaxSize + 1)
			}
			kept = append(kept, f)
		case r < spec.ChangeRate*1.25:
			// deleted
		default:
			kept = append(kept, f)
		}
	}
	sb.live = kept
	add := int(float64(spec.Files)*spec.ChangeRate/4 + 0.5)
	for i := 0; i < add; i++ {
		sb.live = append(sb.live, sb.newFile(b))
	}
}

// writeSnapshot creates snapshot number b (build order, 0 = oldest) from the
// current file set: its root, directories, files, symlinks and times.
func (sb *snapBuilder) writeSnapshot(b int) {
	sb.t.Helper()
	snapName := "daily." + strconv.Itoa(sb.spec.Snapshots-1-b)
	sb.sortLive()
	sb.makeRoot(snapName)
	// Directories first (parents precede children), then the files of
	// all directories in parallel: every decision was made before (by
	// newFile and evolve), so the result does not depend on scheduling.
	sb.makeDirs(snapName)
	sb.writeFiles(snapName, b, sb.dirJobs(b))
	sb.makeSymlinks(b)
	sb.setDirTimes(snapName, b)
	if sb.prevSnap >= 0 {
		unix.Close(sb.prevSnap)
	}
	sb.prevSnap = sb.snap
}

// sortLive orders the live files by directory, then by id.
func (sb *snapBuilder) sortLive() {
	live := sb.live
	sort.Slice(live, func(i, j int) bool {
		if live[i].dir != live[j].dir {
			return live[i].dir < live[j].dir
		}
		return live[i].id < live[j].id
	})
}

// makeRoot creates and opens the root directory snapName of a snapshot.
func (sb *snapBuilder) makeRoot(snapName string) {
	sb.t.Helper()
	if err := unix.Mkdirat(sb.top, snapName, 0o755); err != nil {
		sb.fail("mkdir", snapName, err)
	}
	var err error
	sb.snap, err = unix.Openat(sb.top, snapName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		sb.fail("open", snapName, err)
	}
	if err := unix.Fchmod(sb.snap, 0o755); err != nil {
		sb.fail("chmod", snapName, err)
	}
	sb.paths++
	sb.inodes++
}

// makeDirs creates the directory layout below the current snapshot root.
func (sb *snapBuilder) makeDirs(snapName string) {
	sb.t.Helper()
	for _, dp := range sb.dirs[1:] {
		if err := unix.Mkdirat(sb.snap, dp, 0o755); err != nil {
			sb.fail("mkdir", snapName+"/"+dp, err)
		}
		if err := unix.Fchmodat(sb.snap, dp, 0o755, 0); err != nil {
			sb.fail("chmod", snapName+"/"+dp, err)
		}
		sb.paths++
		sb.inodes++
	}
}

// snapJob is the work of one writeFiles worker step: the (sorted) files of
// directory dirs[di].
type snapJob struct {
	di    int
	files []*snapFile
}

// dirJobs splits the sorted live files into one job per directory and counts
// their paths and the inodes new in snapshot number b.
func (sb *snapBuilder) dirJobs(b int) []snapJob {
	live := sb.live
	var jobs []snapJob
	for lo := 0; lo < len(live); {
		hi := lo
		for hi < len(live) && live[hi].dir == live[lo].dir {
			hi++
		}
		jobs = append(jobs, snapJob{live[lo].dir, live[lo:hi]})
		for _, f := range live[lo:hi] {
			sb.paths++
			if f.born == b {
				sb.inodes++
			}
		}
		lo = hi
	}
	return jobs
}

// writeFiles runs jobs on a pool of up to 8 workers, each writing or
// hard-linking the files of one directory at a time (see writeSnapDir); the
// first error aborts the test.
func (sb *snapBuilder) writeFiles(snapName string, b int, jobs []snapJob) {
	sb.t.Helper()
	var (
		mu       sync.Mutex
		firstErr error
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	snap, prevSnap, dirs, pool, maxSize := sb.snap, sb.prevSnap, sb.dirs, sb.pool, sb.spec.MaxSize
	workers := min(runtime.GOMAXPROCS(0)*2, 8)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 16+maxSize)
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
		sb.t.Fatalf("BuildSnapshots: %v", firstErr)
	}
}

// makeSymlinks creates "stable-link" (a new symlink in the oldest snapshot,
// hard-linked to the previous snapshot's in the others) and "latest" (a fresh
// symlink to a random live file, or to "no-files") in snapshot number b.
func (sb *snapBuilder) makeSymlinks(b int) {
	sb.t.Helper()
	snap := sb.snap
	if b == 0 {
		if err := unix.Symlinkat("d1-0/../d1-0", snap, "stable-link"); err != nil {
			sb.fail("symlink", "stable-link", err)
		}
		if err := unix.UtimesNanoAt(snap, "stable-link", []unix.Timespec{unix.NsecToTimespec(4102444800_000000001), unix.NsecToTimespec(1_650_000_000_000000001)}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			sb.fail("utimes", "stable-link", err)
		}
		sb.inodes++
	} else if err := unix.Linkat(sb.prevSnap, "stable-link", snap, "stable-link", 0); err != nil {
		sb.fail("link", "stable-link", err)
	}
	sb.paths++
	target := "no-files"
	if len(sb.live) > 0 {
		f := sb.live[sb.rng.IntN(len(sb.live))]
		target = f.name()
		if sb.dirs[f.dir] != "" {
			target = sb.dirs[f.dir] + "/" + target
		}
	}
	if err := unix.Symlinkat(target, snap, "latest"); err != nil {
		sb.fail("symlink", "latest", err)
	}
	if err := unix.UtimesNanoAt(snap, "latest", []unix.Timespec{unix.NsecToTimespec(4102444800_000000002 + int64(b)), unix.NsecToTimespec(int64(1_700_000_000+b*86400) * 1e9)}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		sb.fail("utimes", "latest", err)
	}
	sb.paths++
	sb.inodes++
}

// setDirTimes sets the times of the directories of snapshot number b,
// deepest first, then of the snapshot root snapName.
func (sb *snapBuilder) setDirTimes(snapName string, b int) {
	sb.t.Helper()
	ts := func(ns int64) []unix.Timespec {
		return []unix.Timespec{unix.NsecToTimespec(ns + 500_000_000), unix.NsecToTimespec(ns)}
	}
	for di := len(sb.dirs) - 1; di >= 1; di-- {
		mt := int64(1_700_000_000+b*86400+di)*1e9 + 123
		if err := unix.UtimesNanoAt(sb.snap, sb.dirs[di], ts(mt), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			sb.fail("utimes", sb.dirs[di], err)
		}
	}
	if err := unix.UtimesNanoAt(sb.snap, ".", ts(int64(1_700_000_000+b*86400)*1e9+7), 0); err != nil {
		sb.fail("utimes", snapName, err)
	}
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
