package job

import (
	"encoding/json"
	"fmt"
	"hlcp/internal/msg"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/budget"
	"hlcp/internal/copier"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/journal"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
	"hlcp/internal/remove"
	"hlcp/internal/scan"
	"hlcp/internal/testhook"
)

// Subdirectories of the state directory: the scan's runs (entries in e,
// directories in d), and the sort's working files.
const (
	scanDir = "scan"
	sortTmp = "sorttmp"
)

func (r *runner) phases() error {
	j := r.j
	if j.Phase == journal.PhaseScan {
		if err := r.scanPhase(); err != nil {
			return err
		}
	} else if len(j.Scan) > 0 {
		json.Unmarshal(j.Scan, &r.sum.Scan)
	}
	if j.Phase == journal.PhaseSort {
		if err := r.sortPhase(); err != nil {
			return err
		}
	} else if len(j.Plan) > 0 {
		json.Unmarshal(j.Plan, &r.sum.Plan)
	}
	dirs, err := plan.OpenDirTable(j.StateDir(), j.Files)
	if err != nil {
		return fmt.Errorf("open directory table: %w", err)
	}
	r.dirs = dirs
	// The directories' parents and names are held in RAM when they fit a
	// 128th of the budget (1 MiB by default: some 60,000 directories); the
	// directory caches' lookups then cost no syscall. A larger table is
	// read from disk (two preads a lookup), so memory does not grow with
	// the tree.
	if _, err := dirs.LoadNames(r.budget().DirNames()); err != nil {
		return fmt.Errorf("load directory table: %w", err)
	}
	// Room for a directory cache per side that holds every directory
	// (see fsx.RaiseFileLimit), where the limits and the budget allow:
	// each cache's entries take at most a 128th of the budget (1 MiB,
	// 8,192 directories, by default).
	fsx.RaiseFileLimit(r.budget().FileLimitFor(dirs.Len()))
	r.dirCacheSize = budget.DirCacheSize(2, r.budget().DirCaches())
	if r.sum.Resumed {
		if err := r.remapDevices(); err != nil {
			return err
		}
	}
	if r.o.Move && j.Phase != journal.PhaseMkdir {
		if r.copied, err = plan.OpenCopied(j.StateDir(), j.Files[plan.CopiedFile]); err != nil {
			return fmt.Errorf("open the copy records: %w", err)
		}
	}
	r.cp, err = copier.New(r.ctx, r.srcFd, r.dstFd, dirs, copier.Options{
		Jobs: r.o.Jobs, Owner: os.Geteuid() == 0, Retries: r.o.Retries, SrcDevMap: r.srcDevMap, DirCacheSize: r.dirCacheSize,
		NoPrefetch: testhook.NoPrefetch, NoRing: testhook.NoURing, NoDirect: testhook.NoDirect,
		OnError: r.errs.add, OnWarn: r.errs.warn,
	})
	if err != nil {
		return err
	}
	if j.Phase == journal.PhaseMkdir {
		ctr := r.rep.Phase("mkdir", "dirs", "")
		ctr.Total.Store(int64(dirs.Len()))
		if err := r.cp.MakeDirs(1, func() { ctr.Done.Add(1) }); err != nil {
			return err
		}
		r.rep.End()
		// The skeleton must be durable before the journal says it exists
		// (the state may be on another filesystem than DST).
		if err := r.syncDst(); err != nil {
			return err
		}
		if r.o.Move {
			c, info, err := plan.CreateCopied(j.StateDir(), r.sum.Plan.Groups)
			if err != nil {
				return fmt.Errorf("create the copy records: %w", err)
			}
			r.copied = c
			j.Files[plan.CopiedFile] = info
		}
		j.Phase = journal.PhaseCopy
		if err := r.save(); err != nil {
			return err
		}
	}
	r.cp.SetCopied(r.copied)
	if j.Phase == journal.PhaseCopy {
		if err := r.copyPhase(); err != nil {
			return err
		}
	}
	if j.Phase == journal.PhaseFinish {
		if err := r.finishPhase(); err != nil {
			return err
		}
	}
	if j.Phase == journal.PhaseRemove {
		if err := r.removePhase(); err != nil {
			return err
		}
	}
	if j.Phase == journal.PhaseDone || r.keepState {
		return nil
	}
	return fmt.Errorf("state in unknown phase %q", j.Phase)
}

func (r *runner) scanPhase() error {
	j := r.j
	sd := j.StateDir()
	// A scan that was interrupted restarts from scratch.
	if err := j.RemoveSub(scanDir); err != nil {
		return err
	}
	top, err := sd.Mkdir(scanDir)
	if err != nil {
		return err
	}
	defer top.Close()
	edir, err := top.Mkdir("e")
	if err != nil {
		return err
	}
	defer edir.Close()
	ddir, err := top.Mkdir("d")
	if err != nil {
		return err
	}
	defer ddir.Close()
	ents := extsort.New(edir, r.budget().ScanEntries(), true)
	dirs := extsort.New(ddir, r.budget().ScanDirs(), true)
	// Neither DST nor the state directory is copied into itself, whatever
	// path (a bind mount) reaches it from SRC.
	var exclude [][2]uint64
	var xs unix.Stat_t
	if unix.Fstat(r.dstFd, &xs) == nil {
		exclude = append(exclude, [2]uint64{xs.Dev, xs.Ino})
	}
	if xs, err := sd.Stat(); err == nil {
		exclude = append(exclude, [2]uint64{xs.Dev, xs.Ino})
	}
	ctr := r.rep.Phase("scan", "paths", "")
	var names []string
	if r.o.State == "" {
		// An entry named like the state directory, made in SRC after the
		// preflight check, would be copied into the job's own state.
		names = []string{StateName}
	}
	st, err := scan.Scan(r.ctx, r.o.Src, scan.Options{
		Exclude: exclude, ExcludeTop: names, RootFd: r.srcFd,
		Jobs: r.o.Jobs, OneFileSystem: r.o.OneFileSystem,
		NewEmitter: func() scan.Emitter { return plan.NewEmitter(ents, dirs) },
		Counters:   ctr,
		OnError:    r.errs.add,
	})
	if err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	eruns, _, _, err := ents.Finish()
	if err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	druns, _, _, err := dirs.Finish()
	if err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	if err := top.Sync(); err != nil {
		return err
	}
	r.rep.End()
	ents, dirs = nil, nil
	debug.FreeOSMemory()
	j.EntryRuns, j.DirRuns = journalRuns(eruns), journalRuns(druns)
	r.sum.Scan = st
	j.Scan, _ = json.Marshal(st)
	j.Dirs = uint32(st.Dirs)
	j.Phase = journal.PhaseSort
	return r.save()
}

func journalRuns(runs []extsort.Run) []journal.Run {
	out := make([]journal.Run, len(runs))
	for i, r := range runs {
		out[i] = journal.Run{Name: r.Name, Size: r.Size, Records: r.Records}
	}
	return out
}

func sortRuns(dir *fsx.Dir, runs []journal.Run) []extsort.Run {
	out := make([]extsort.Run, len(runs))
	for i, r := range runs {
		out[i] = extsort.Run{Dir: dir, Name: r.Name, Size: r.Size, Records: r.Records}
	}
	return out
}

func (r *runner) sortPhase() error {
	j := r.j
	sd := j.StateDir()
	top, err := sd.Sub(scanDir)
	if err != nil {
		return &blockfile.DamageError{File: j.Join(scanDir), Why: err.Error()}
	}
	defer top.Close()
	edir, err := top.Sub("e")
	if err != nil {
		return &blockfile.DamageError{File: top.Join("e"), Why: err.Error()}
	}
	defer edir.Close()
	ddir, err := top.Sub("d")
	if err != nil {
		return &blockfile.DamageError{File: top.Join("d"), Why: err.Error()}
	}
	defer ddir.Close()
	if err := j.RemoveSub(sortTmp); err != nil {
		return err
	}
	tmp, err := sd.Mkdir(sortTmp)
	if err != nil {
		return err
	}
	defer tmp.Close()
	ctr := r.rep.Phase("sort", "records", "")
	ctr.Total.Store(r.sum.Scan.Entries)
	mem := r.budget().PlanMerge()
	dt, dfiles, err := plan.BuildDirTable(sortRuns(ddir, j.DirRuns), tmp, sd, mem)
	if err != nil {
		return fmt.Errorf("sort directories: %w", err)
	}
	dt.Close()
	ps, pfiles, err := plan.Build(r.ctx, sortRuns(edir, j.EntryRuns), tmp, sd, mem, func(n int64) { ctr.Done.Store(n) })
	if err != nil {
		return fmt.Errorf("sort entries: %w", err)
	}
	ctr.Done.Store(ps.Paths)
	r.rep.End()
	r.sum.Plan = ps
	j.Plan, _ = json.Marshal(ps)
	j.Files = make(map[string]blockfile.Info)
	for _, m := range []map[string]blockfile.Info{dfiles, pfiles} {
		for k, v := range m {
			j.Files[k] = v
		}
	}
	j.EntryRuns, j.DirRuns = nil, nil
	j.Phase = journal.PhaseMkdir
	if err := r.save(); err != nil {
		return err
	}
	j.RemoveSub(scanDir)
	j.RemoveSub(sortTmp)
	return nil
}

// remapDevices maps the device numbers the scan saw to the ones the
// source has now, for the source root (see sameJob) and for every mount
// point below it that the scan went into: after a reboot, loop devices and
// btrfs subvolumes may have other numbers.
func (r *runner) remapDevices() error {
	cache := fsx.NewDirCache(r.srcFd, r.dirs.Resolve, unix.O_PATH, 64)
	defer cache.Close()
	return r.dirs.Scan(1, func(d *plan.Dir) error {
		if d.Flags&plan.DirMountPoint == 0 || d.Flags&(plan.DirGone|plan.DirMountSkipped) != 0 {
			return nil
		}
		pfd, err := cache.Acquire(d.Parent)
		if err != nil {
			return nil // reported where it is used
		}
		var st unix.Stat_t
		err = unix.Fstatat(pfd, string(d.Name), &st, unix.AT_SYMLINK_NOFOLLOW)
		cache.Release(d.Parent)
		if err != nil || st.Dev == d.Dev {
			return nil
		}
		if r.srcDevMap == nil {
			r.srcDevMap = make(map[uint64]uint64)
		}
		if _, ok := r.srcDevMap[d.Dev]; !ok {
			r.srcDevMap[d.Dev] = st.Dev
			r.rep.Logf("the filesystem mounted at %s has device %d:%d now, %d:%d at the scan", msg.Quote(r.dirs.Rel(d.ID, nil)),
				unix.Major(st.Dev), unix.Minor(st.Dev), unix.Major(d.Dev), unix.Minor(d.Dev))
		}
		return nil
	})
}

// planPhase starts the progress of a phase that walks the plan's groups
// from plan offset mark on; what lies below the mark is estimated from its
// share of the plan file.
func (r *runner) planPhase(name string, mark int64) *progress.Counters {
	ctr := r.rep.Phase(name, "inodes", "paths")
	ctr.Total.Store(r.sum.Plan.Groups)
	if mark > 0 {
		ctr.Done.Store(int64(float64(r.sum.Plan.Groups) * planShare(&r.j.State, mark)))
	}
	return ctr
}

func (r *runner) copyPhase() error {
	j := r.j
	ctr := r.rep.Phase("copy", "inodes", "paths")
	ctr.Total.Store(r.sum.Plan.Groups)
	ctr.Done.Store(j.GroupsBelow)
	ckpt := func(m copier.Marks) error {
		if m.Plan == j.Watermark && m.Links == j.LinkMark {
			return nil
		}
		if err := r.syncDst(); err != nil {
			return err
		}
		if r.copied != nil {
			if err := r.copied.Sync(); err != nil {
				return err
			}
		}
		j.Watermark, j.GroupsBelow, j.LinkMark = m.Plan, m.Groups, m.Links
		j.GroupsDone = r.cp.Stats.Groups.Load()
		j.PathsDone = r.cp.Stats.Paths.Load()
		j.BytesDone = r.cp.Stats.Bytes.Load()
		return r.save()
	}
	from := copier.Marks{Plan: j.Watermark, Groups: j.GroupsBelow, Links: j.LinkMark}
	if err := r.cp.Copy(r.input(), from, ctr, ckpt, r.o.CheckpointEvery); err != nil {
		return err
	}
	r.rep.End()
	j.Phase = journal.PhaseFinish
	j.FinishBelow = r.dirs.Len()
	return r.save()
}

// finishPhase sets directory metadata deepest first. A checkpoint (syncfs,
// then the journal) records the id below which directories remain, so a
// rerun does not reopen directories already given their final mode (a
// non-root user could not reopen one that is mode 000).
func (r *runner) finishPhase() error {
	j := r.j
	ctr := r.rep.Phase("finish", "dirs", "")
	total := int64(r.dirs.Len())
	ctr.Total.Store(total)
	ctr.Done.Store(total - int64(j.FinishBelow))
	last := time.Now()
	err := r.cp.Finish(j.FinishBelow, false, func(id uint32) error {
		ctr.Done.Add(1)
		if time.Since(last) < r.o.CheckpointEvery {
			return nil
		}
		last = time.Now()
		if err := r.syncDst(); err != nil {
			return err
		}
		j.FinishBelow = id // id and above are done
		return r.save()
	})
	if err != nil {
		return err
	}
	r.rep.End()
	if err := r.syncDst(); err != nil {
		return err
	}
	j.FinishBelow = 0
	j.Phase = journal.PhaseDone
	if r.o.Move {
		j.Phase = journal.PhaseRemove
	}
	return r.save()
}

// removePhase is move's last stage: source files, then source directories.
func (r *runner) removePhase() error {
	j := r.j
	// The copy is done with its directory caches: their fds and memory
	// go to the remover's.
	if r.cp != nil {
		r.cp.Close()
	}
	// Nothing is removed from SRC before everything written to DST is
	// durable: a rerun in this phase (after kept paths were copied by
	// hand, say) syncs DST again before its first unlink. And DST holds
	// the only copy of what goes from now on: the move marker says so
	// whatever becomes of the journal.
	if err := r.syncDst(); err != nil {
		return err
	}
	if err := j.MarkMoved(); err != nil {
		return err
	}
	r.rm = remove.New(r.srcFd, r.dstFd, r.dirs, remove.Options{Checksum: r.o.Checksum, OnError: r.errs.add, DirCacheSize: r.dirCacheSize,
		SrcDevMap: r.srcDevMap, ProbeDir: j.StateDir(), Copied: r.copied, Owner: os.Geteuid() == 0})
	if !j.FilesGone {
		ctr := r.planPhase("remove", j.RemoveMark)
		ckpt := func(off, groups int64) error {
			j.RemoveMark, j.RemoveGroups = off, groups
			return r.save()
		}
		in := remove.Input{Dir: j.StateDir(), Plan: j.Files[plan.PlanFile]}
		if err := r.rm.Files(r.ctx, in, j.RemoveMark, j.RemoveGroups, ctr, ckpt, r.o.CheckpointEvery); err != nil {
			return err
		}
		r.rep.End()
		j.FilesGone = true
		j.RemoveDirs = r.dirs.Len()
		if err := r.save(); err != nil {
			return err
		}
	}
	ctr := r.rep.Phase("rmdir", "dirs", "")
	total := int64(r.dirs.Len())
	ctr.Total.Store(total)
	ctr.Done.Store(total - int64(j.RemoveDirs))
	ckpt := func(below uint32) error {
		j.RemoveDirs = below
		return r.save()
	}
	if err := r.rm.Dirs(r.ctx, j.RemoveDirs, func() { ctr.Done.Add(1) }, ckpt, r.o.CheckpointEvery); err != nil {
		return err
	}
	r.rep.End()
	// What SRC still holds that the scan did not see (added, or renamed,
	// after it) was not copied: it is listed, and the move is not done.
	var left []string
	var more int
	if r.rm.Stats.Kept.Load()+r.rm.Stats.DirsKept.Load() == 0 {
		left, more = r.rm.Leftovers(20)
	}
	for _, name := range left {
		r.errs.add(name, fmt.Errorf("kept in SRC: not in the scan (added or renamed after it), so not copied"))
	}
	if more > 0 {
		r.errs.add("...", fmt.Errorf("and %d more entries of SRC's top directory kept", more))
	}
	j.RemoveDirs = 0
	if r.rm.Stats.Kept.Load()+r.rm.Stats.DirsKept.Load() > 0 || len(left) > 0 {
		// Some source paths are still there: the job stays, in phase
		// remove, so that a rerun (after the user dealt with them) goes
		// through SRC again and removes what now matches.
		j.FilesGone, j.RemoveMark, j.RemoveGroups = false, 0, 0
		r.keepState = true
		return r.save()
	}
	j.Phase = journal.PhaseDone
	return r.save()
}

// finishJob sets the root's metadata, removes the state (which lives in
// the root by default) and sets the root's times again.
func (r *runner) finishJob() (int, error) {
	r.fillSummary()
	var listed strings.Builder
	if r.errs.count() > 0 || r.sumErrorsFromEarlier() {
		r.errs.list(&listed)
	}
	r.errs.close()
	// The root's metadata is set while the state still exists (a crash
	// here is resumed like any other), then the state is removed and the
	// root's times, which that removal changed, are set again.
	if err := r.cp.FinishRoot(); err != nil {
		return r.stop(err)
	}
	if err := r.syncDst(); err != nil {
		return r.stop(err)
	}
	if r.keepState {
		// The next run of the move makes a new pass over SRC, which
		// reports again what is still kept: the list starts afresh.
		r.errs.truncate()
		r.j.Errors = 0
		if err := r.j.Save(); err != nil {
			return r.stop(err)
		}
		if err := r.cp.InRoot(func() error { return nil }); err != nil {
			r.rep.Logf("warning: %v", err)
		}
	} else if err := r.cp.InRoot(r.removeState); err != nil {
		r.rep.Logf("warning: remove state directory: %v", err)
	}
	if err := r.syncDst(); err != nil {
		return r.stop(err)
	}
	if r.o.Move && r.o.RemoveRoot {
		if err := r.removeSrcRoot(); err != nil {
			r.errs.add(".", fmt.Errorf("kept SRC's root: %w", err))
		} else {
			r.sum.RootRemoved = true
		}
	}
	r.fillSummary() // the root's own errors count too
	code := ExitOK
	if r.sum.Errors > 0 || r.sum.Changed > 0 || listed.Len() > 0 {
		code = ExitPartial
	}
	r.rep.Close()
	if listed.Len() > 0 {
		fmt.Fprintf(r.o.Stderr, "errors (%d):\n%s", strings.Count(listed.String(), "\n"), listed.String())
	}
	r.printSummary(code)
	if r.keepState {
		fmt.Fprintf(r.o.Stderr, "hlcp: the move is not finished: the paths listed are still in SRC; its state is kept in %s: deal with them and rerun the same command\n", msg.Quote(r.j.Dir))
	}
	return code, nil
}

func absPath(p string) string {
	a, _ := filepath.Abs(p)
	return a
}

func (r *runner) sumErrorsFromEarlier() bool { return r.prevErrors > 0 }

// input is the plan for the copier.
func (r *runner) input() copier.Input {
	return copier.Input{Dir: r.j.StateDir(), Plan: r.j.Files[plan.PlanFile], Links: r.j.Files[plan.LinksFile]}
}

// removeState removes the finished job's state (see finishJob).
func (r *runner) removeState() error {
	var root plan.Dir
	if err := r.dirs.Get(0, &root); err != nil {
		return err
	}
	err := r.j.Remove([2]unix.Timespec{root.Atime, root.Mtime})
	// Tests: a kill after the state is gone and before the root's times
	// are set again; a rerun must find DST complete.
	testhook.CrashAt("state-removed")
	return err
}

// removeSrcRoot removes SRC itself (move --remove-root) by its name in its
// parent, only while that name still holds the directory the job opened
// as SRC: a path swapped meanwhile (a parent renamed, a symlink put in
// its place) never leads to another directory.
func (r *runner) removeSrcRoot() error {
	abs := absPath(r.o.Src)
	pfd, err := unix.Open(filepath.Dir(abs), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	var want, now unix.Stat_t
	if err := unix.Fstat(r.srcFd, &want); err != nil {
		return err
	}
	if err := unix.Fstatat(pfd, filepath.Base(abs), &now, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if now.Dev != want.Dev || now.Ino != want.Ino {
		return fmt.Errorf("%s no longer names the directory that was moved", msg.Quote(r.o.Src))
	}
	return unix.Unlinkat(pfd, filepath.Base(abs), unix.AT_REMOVEDIR)
}

// budget is the job's memory budget, in named shares.
func (r *runner) budget() budget.Budget { return budget.Budget(r.o.Memory) }
