// Package job runs whole commands (copy, move, verify, status) as a
// sequence of the pipeline's stages, with the journal, progress display,
// error list and summary around them.
package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"hlcp/internal/fsx"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/copier"
	"hlcp/internal/extsort"
	"hlcp/internal/journal"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
	"hlcp/internal/remove"
	"hlcp/internal/scan"
)

// Exit codes of every command.
const (
	ExitOK          = 0   // done, everything copied / trees identical
	ExitDiffer      = 1   // verify: the trees differ
	ExitUsage       = 2   // bad arguments or refused to start; nothing changed
	ExitPartial     = 3   // finished, but some paths failed or changed while copied
	ExitStopped     = 4   // stopped (destination full, I/O error, internal); rerun resumes
	ExitInterrupted = 130 // interrupted by a signal; rerun resumes
)

// StateName is the default state directory inside DST.
const StateName = ".hlcp-state"

// DefaultMemory is the default budget for the whole process.
const DefaultMemory = 128 << 20

// sortShare: the scan's sort of the entries, and the plan's merge of them,
// each get a 64th of the budget (2 MiB by default); the directories' sort
// and the links' sort (beside the merge) get less. The scan and the sort
// then stay below the copy phase's own working set (workers, directory
// caches, prefetched files, the runtime), so the process's peak does not
// grow with the tree. Bigger buffers would only mean fewer, longer runs:
// the merge takes up to 64 runs a pass, and a 10M-path tree's sort phase
// took 4 s of its 3 minutes with twice these buffers.
const sortShare = 64

// Options of copy (and move).
type Options struct {
	Src, Dst        string
	State           string // state directory; "" = DST/.hlcp-state
	Jobs            int
	Memory          int64
	OneFileSystem   bool
	Restart         bool
	Retries         int
	Progress        progress.Mode
	Interval        time.Duration
	Quiet           bool
	CheckpointEvery time.Duration
	Stdout, Stderr  io.Writer

	// Move: remove each source path once its copy is durable and
	// matches (hlcp move).
	Move bool
	// Checksum (move): compare content before removing a source file.
	Checksum bool
	// RemoveRoot (move): remove SRC itself when it is empty at the end.
	RemoveRoot bool
}

// DefaultJobs is the default number of workers. The copy waits on the
// disk far more than it computes (on a cold cache, 2 cores were busy
// about a third of the time with 4 workers), so it wants several workers
// per core: 4 per core, between 8 and 32. (1M-path tree, 2 cores: 4
// workers 25.9 s, 8 workers 22.3 s, 16 workers 21.4 s.)
func DefaultJobs() int {
	return min(max(4*runtime.NumCPU(), 8), 32)
}

func (o *Options) defaults() {
	if o.Jobs <= 0 {
		o.Jobs = DefaultJobs()
	}
	if o.Memory <= 0 {
		o.Memory = DefaultMemory
	}
	if o.Retries < 0 {
		o.Retries = 0
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = 10 * time.Second
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
}

// Summary is what a copy did, printed at the end (and as JSON).
type Summary struct {
	Command      string        `json:"command"`
	Src          string        `json:"src"`
	Dst          string        `json:"dst"`
	Elapsed      time.Duration `json:"elapsed_ns"`
	Scan         scan.Stats    `json:"scan"`
	Plan         plan.Stats    `json:"plan"`
	Dirs         int64         `json:"dirs"`
	Inodes       int64         `json:"inodes_created"`
	Paths        int64         `json:"paths_created"`
	Links        int64         `json:"links_created"`
	Bytes        int64         `json:"bytes"`
	Reflinked    int64         `json:"files_reflinked"`
	CopyRange    int64         `json:"files_copy_file_range"`
	Sendfile     int64         `json:"files_sendfile"`
	Direct       int64         `json:"files_direct"`
	RingLinks    int64         `json:"links_batched"`
	ReadWrite    int64         `json:"files_read_write"`
	SplitGroups  int64         `json:"split_groups"`
	ExtraCopies  int64         `json:"extra_copies"`
	ExtraBytes   int64         `json:"extra_bytes"`
	OutsideLinks int64         `json:"inodes_with_links_outside_src"`
	Changed      int64         `json:"changed_while_copying"`
	Removed      int64         `json:"src_paths_removed,omitempty"`
	Kept         int64         `json:"src_paths_kept,omitempty"`
	DirsRemoved  int64         `json:"src_dirs_removed,omitempty"`
	DirsKept     int64         `json:"src_dirs_kept,omitempty"`
	RootRemoved  bool          `json:"src_root_removed,omitempty"`
	Errors       int64         `json:"errors"`
	Warnings     []string      `json:"warnings,omitempty"`
	PeakRSS      int64         `json:"peak_rss_bytes"`
	Resumed      bool          `json:"resumed"`
	ExitCode     int           `json:"exit_code"`
}

// PeakRSS reads the process's peak resident set size (VmHWM).
func PeakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(line[6:]), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

type runner struct {
	o            Options
	rep          *progress.Reporter
	j            *journal.Journal
	errs         *errLog
	srcFd        int
	dstFd        int
	start        time.Time
	sum          Summary
	stopped      atomic.Bool
	cp           *copier.Copier
	rm           *remove.Remover
	dirs         *plan.DirTable
	dirCacheSize int // entries per directory cache, within the budget
	srcDevMap    map[uint64]uint64
	// keepState: a move ended with paths kept in SRC; its state stays for
	// a rerun.
	keepState bool
	// prevErrors: per-path errors of earlier attempts of this job (their
	// lines are in the error log, which every attempt appends to).
	prevErrors int64
}

func (o *Options) command() string {
	if o.Move {
		return "move"
	}
	return "copy"
}

// Copy runs `hlcp copy`, or `hlcp move` with Options.Move. It returns the exit code and an error to print
// (nil when the summary says it all).
func Copy(o Options) (int, error) {
	o.defaults()
	r := &runner{o: o, start: time.Now(), srcFd: -1, dstFd: -1}
	r.sum.Command, r.sum.Src, r.sum.Dst = o.command(), o.Src, o.Dst
	code, err := r.run()
	if r.cp != nil {
		r.cp.Close()
	}
	if r.rm != nil {
		r.rm.Close()
	}
	if r.dirs != nil {
		r.dirs.Close()
	}
	if r.srcFd >= 0 {
		unix.Close(r.srcFd)
	}
	if r.dstFd >= 0 {
		unix.Close(r.dstFd)
	}
	return code, err
}

// setMemoryLimit gives the Go heap the budget, less room for stacks, the
// runtime and buffers outside the heap, so that the collector runs before
// garbage (a finished phase's sort buffers) pushes the process past it.
// The collector also runs when the heap has grown by a quarter since the
// last one, not the default doubling: hlcp's heap is mostly long-lived
// pointer-free buffers, cheap to mark, and its time goes to syscalls, so
// the collections cost about nothing while the heap's peak stays near what
// is live.
func setMemoryLimit(budget int64) {
	debug.SetMemoryLimit(max(budget-24<<20, 16<<20))
	if os.Getenv("GOGC") == "" { // a GOGC set by hand (GOGC=off for a measurement) stays
		debug.SetGCPercent(gcPercent)
	}
}

// gcPercent is the heap growth that triggers a collection (GOGC).
const gcPercent = 25

func (r *runner) run() (int, error) {
	o := &r.o
	setMemoryLimit(o.Memory)

	if err := checkSrc(o.Src); err != nil {
		return ExitUsage, err
	}
	stateDir := o.State
	stateName := ""
	if stateDir == "" {
		stateDir = filepath.Join(o.Dst, StateName)
		stateName = StateName
	}
	if in, err := inside(o.Dst, o.Src); err != nil {
		return ExitUsage, usagef("check DST: %v", err)
	} else if in {
		return ExitUsage, usagef("DST %s is inside SRC %s", fsx.Quote(o.Dst), fsx.Quote(o.Src))
	}
	if o.State != "" {
		if in, _ := inside(o.State, o.Src); in {
			return ExitUsage, usagef("--state %s is inside SRC %s", fsx.Quote(o.State), fsx.Quote(o.Src))
		}
		// A state directory of the user's inside DST could collide with
		// a directory of the copy (and be removed at the end with it);
		// the default one, DST/.hlcp-state, is kept out of the copy.
		in, err := inside(o.State, o.Dst)
		if err != nil { // DST does not exist yet: compare the spellings
			st, _ := realPath(o.State)
			d, _ := realPath(o.Dst)
			in = st == d || strings.HasPrefix(st, d+"/")
		}
		if in {
			return ExitUsage, usagef("--state %s is inside DST %s: leave --state out to keep the state in DST/%s, or give a directory outside DST", fsx.Quote(o.State), fsx.Quote(o.Dst), StateName)
		}
	}
	if stateName != "" {
		if _, err := os.Lstat(filepath.Join(o.Src, StateName)); err == nil {
			return ExitUsage, usagef("SRC has an entry named %s, which hlcp uses for its state inside DST: pass --state DIR to keep the state elsewhere", StateName)
		}
	}
	exists, empty, err := dstState(o.Dst, stateName)
	if err != nil {
		return ExitUsage, err
	}

	// Find an earlier job.
	var old *journal.Journal
	if exists || o.State != "" {
		old, err = journal.Open(stateDir)
		if err != nil && !errors.Is(err, journal.ErrNoJob) {
			if !o.Restart {
				return ExitUsage, usagef("%v (pass --restart to discard it)", err)
			}
			// Damaged or of another version, but a job's state: --restart
			// discards it like any other.
			old = &journal.Journal{Dir: stateDir}
		}
	}
	if old != nil && old.ID.Command == "move" && (old.Phase == journal.PhaseRemove || old.Phase == journal.PhaseDone) {
		// The move has removed source paths: DST holds their only copy.
		// Neither --restart nor another job may overwrite them.
		if o.Restart || old.ID.Src != absPath(o.Src) || !o.Move {
			return ExitUsage, usagef("DST holds a move (`hlcp move %s %s`) that has already removed source paths, whose only copy is now in DST: rerun that command to finish it (--restart is refused)",
				fsx.Quote(old.ID.Src), fsx.Quote(old.ID.Dst))
		}
	}
	if old != nil && o.Restart {
		if err := old.Remove(); err != nil {
			return ExitUsage, usagef("remove old state: %v", err)
		}
		old = nil
		empty = true // what is there is our own partial copy: overwritten
	}
	if old == nil && !empty {
		return ExitUsage, usagef("DST %s is not empty (hlcp copy makes DST an exact copy of SRC; give a new or empty directory)", fsx.Quote(o.Dst))
	}
	if !exists {
		if err := os.Mkdir(o.Dst, 0o700); err != nil {
			return ExitUsage, usagef("create DST: %v", err)
		}
	}
	r.srcFd, err = unix.Open(o.Src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return ExitUsage, usagef("open SRC: %v", err)
	}
	r.dstFd, err = unix.Open(o.Dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return ExitUsage, usagef("open DST: %v", err)
	}
	id, err := r.identity()
	if err != nil {
		return ExitUsage, err
	}
	if old != nil {
		// Device numbers are not part of a job's identity: a reboot can
		// renumber a loop device or a btrfs subvolume. The same paths and
		// root inodes are; the scan's source device is mapped to the
		// current one.
		oid, nid := old.ID, id
		oid.SrcDev, oid.DstDev, nid.SrcDev, nid.DstDev = 0, 0, 0, 0
		if oid == nid && old.ID.SrcDev != id.SrcDev {
			r.srcDevMap = map[uint64]uint64{old.ID.SrcDev: id.SrcDev}
		}
		if oid != nid {
			return ExitUsage, usagef("DST holds an unfinished job started as `hlcp %s %s %s` (options %q); rerun that command to finish it, or pass --restart to discard its state",
				old.ID.Command, fsx.Quote(old.ID.Src), fsx.Quote(old.ID.Dst), old.ID.Options)
		}
		r.j = old
		r.j.Attempts++
		r.prevErrors = old.Errors
		r.sum.Resumed = true
	} else {
		// DST (new, or empty) must not pass a default ACL, its own or one
		// inherited from its parent, to what the copy creates: files
		// would get ACL entries the source does not have. The source
		// root's own xattrs and ACLs are applied at the end.
		unix.Fremovexattr(r.dstFd, "system.posix_acl_default")
		unix.Fremovexattr(r.dstFd, "system.posix_acl_access")
		r.j, err = journal.Create(stateDir, id)
		if err != nil {
			return ExitUsage, err
		}
	}

	r.j.Reserve()

	mode := o.Progress
	if o.Quiet {
		mode = progress.Quiet
	}
	r.rep = progress.New(o.Stderr, mode, o.Interval)
	defer r.rep.Close()
	r.errs, err = newErrLog(r.rep, r.j.Path("errors.log"))
	if err != nil {
		return ExitStopped, err
	}
	defer r.errs.close()
	if r.sum.Resumed {
		r.rep.Logf("resuming the job from phase %s (attempt %d)", r.j.Phase, r.j.Attempts)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for range sigs {
			r.stopped.Store(true)
			if cp := r.cp; cp != nil && r.j.Phase == journal.PhaseCopy {
				cp.Stop(errInterrupted)
				continue
			}
			r.errs.sync()
			r.rep.Logf("interrupted: the job state is kept; rerun the same command to resume")
			os.Exit(ExitInterrupted)
		}
	}()

	killHook(r.rep)
	if err := r.phases(); err != nil {
		return r.stop(err)
	}
	return r.finishJob()
}

var errInterrupted = errors.New("interrupted")

func (r *runner) identity() (journal.Identity, error) {
	var ss, ds unix.Stat_t
	if err := unix.Fstat(r.srcFd, &ss); err != nil {
		return journal.Identity{}, err
	}
	if err := unix.Fstat(r.dstFd, &ds); err != nil {
		return journal.Identity{}, err
	}
	src, _ := filepath.Abs(r.o.Src)
	dst, _ := filepath.Abs(r.o.Dst)
	opts := fmt.Sprintf("one-file-system=%v", r.o.OneFileSystem)
	return journal.Identity{Command: r.o.command(), Src: src, Dst: dst, SrcDev: ss.Dev, SrcIno: ss.Ino, DstDev: ds.Dev, DstIno: ds.Ino, Options: opts}, nil
}

// stop ends a run that could not finish: the state is kept for a rerun.
func (r *runner) stop(err error) (int, error) {
	r.fillSummary()
	code := ExitStopped
	msg := fmt.Sprintf("stopped in phase %s: %v", r.j.Phase, err)
	if errors.Is(err, errInterrupted) {
		code = ExitInterrupted
		msg = "interrupted"
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		msg += "\nthe destination is full" + r.spaceNeeded() + ": free space (or move the job to a larger destination, see the README) and rerun the same command to resume"
	}
	r.rep.Close()
	r.printSummary(code)
	return code, fmt.Errorf("%s\nthe job state is kept in %s; rerun the same command to resume", msg, r.j.Dir)
}

// spaceNeeded says how much the rest of the copy needs, from the last
// checkpoint on, and how much the destination has free.
func (r *runner) spaceNeeded() string {
	j := r.j
	if r.cp == nil || (j.Phase != journal.PhaseCopy && j.Phase != journal.PhaseMkdir) {
		return ""
	}
	need, inodes, complete, err := r.cp.Remaining(j.Path("plan"), j.Watermark, time.Minute)
	if err != nil {
		return ""
	}
	about := "about"
	if !complete {
		about = "at least"
	}
	s := fmt.Sprintf(": %s %s of data in %s inodes is still to be copied", about, progress.Bytes(need), progress.Count(inodes))
	var fs unix.Statfs_t
	if unix.Fstatfs(r.dstFd, &fs) == nil {
		s += fmt.Sprintf(", and %s is free", progress.Bytes(int64(fs.Bavail)*int64(fs.Bsize)))
	}
	return s
}

// save records the job's progress. The error log is made durable first,
// with the error count: progress past a failed path is never recorded
// without the failure.
func (r *runner) save() error {
	if cp := r.cp; cp != nil {
		if f := cp.Fatal(); f != nil && (errors.Is(f, unix.ENOSPC) || errors.Is(f, unix.EDQUOT)) {
			// The destination is full: give the state's space reserve
			// to this last checkpoint and the error log.
			r.j.Release()
		}
	}
	if r.errs != nil {
		if err := r.errs.sync(); err != nil {
			return err
		}
		r.j.Errors = r.prevErrors + r.errs.count()
	}
	if err := r.j.Save(); err != nil {
		return err
	}
	if p := os.Getenv("HLCP_TEST_CRASH_AT"); p != "" && p == string(r.j.Phase) {
		// Tests: die like kill -9 right after the journal reached phase p
		// (os.Exit runs no deferred flush or cleanup).
		os.Exit(137)
	}
	return nil
}

// syncDst makes everything written to the destination filesystem durable.
func (r *runner) syncDst() error {
	if err := unix.Syncfs(r.dstFd); err != nil {
		return fmt.Errorf("syncfs destination: %w", err)
	}
	return nil
}

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
	dirs, err := plan.OpenDirTable(j.Path("dirs"))
	if err != nil {
		return fmt.Errorf("open directory table: %w", err)
	}
	r.dirs = dirs
	// The directories' parents and names are held in RAM when they fit a
	// 128th of the budget (1 MiB by default: some 60,000 directories); the
	// directory caches' lookups then cost no syscall. A larger table is
	// read from disk (two preads a lookup), so memory does not grow with
	// the tree.
	if _, err := dirs.LoadNames(r.o.Memory / 128); err != nil {
		return fmt.Errorf("load directory table: %w", err)
	}
	// Room for a directory cache per side that holds every directory
	// (see fsx.RaiseFileLimit), where the limits and the budget allow:
	// each cache's entries take at most a 128th of the budget (1 MiB,
	// 8,192 directories, by default).
	cacheMem := r.o.Memory / 64
	perCache := min(uint64(dirs.Len()), uint64(fsx.DirCacheMemEntries(2, cacheMem)))
	fsx.RaiseFileLimit(min(4*perCache+1024, 1<<20)) // DirCacheSize gives each of 2 caches a quarter
	r.dirCacheSize = fsx.DirCacheSize(2, cacheMem)
	r.cp, err = copier.New(r.srcFd, r.dstFd, dirs, copier.Options{
		Jobs: r.o.Jobs, Owner: os.Geteuid() == 0, Retries: r.o.Retries, SrcDevMap: r.srcDevMap, DirCacheSize: r.dirCacheSize,
		NoPrefetch: os.Getenv("HLCP_NO_PREFETCH") != "", // for A/B measurements
		NoRing:     os.Getenv("HLCP_NO_URING") != "",    // links one linkat at a time, as where io_uring is missing
		NoDirect:   os.Getenv("HLCP_NO_DIRECT") != "",   // sendfile for all data between filesystems
		OnError:    r.errs.add, OnWarn: r.errs.warn,
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
		j.Phase = journal.PhaseCopy
		if err := r.save(); err != nil {
			return err
		}
	}
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

// copyEmitter turns scan output into sort records, batched per worker.
type copyEmitter struct {
	ents, dirs *extsort.Sorter
	ebuf, dbuf []byte
	eend, dend []int
	recs       [][]byte
}

func (e *copyEmitter) Dir(d *plan.Dir, rel []byte) error {
	e.dbuf = plan.AppendDir(e.dbuf, d)
	e.dend = append(e.dend, len(e.dbuf))
	return nil
}

func (e *copyEmitter) Entry(dir uint32, dev, ino uint64, typ uint8, name []byte, _ []byte, _ *unix.Stat_t) error {
	e.ebuf = plan.AppendEntry(e.ebuf, dev, ino, dir, typ, name)
	e.eend = append(e.eend, len(e.ebuf))
	if len(e.ebuf) >= 256<<10 {
		return e.flushEntries()
	}
	return nil
}

func (e *copyEmitter) batch(buf []byte, ends []int) [][]byte {
	e.recs = e.recs[:0]
	start := 0
	for _, end := range ends {
		e.recs = append(e.recs, buf[start:end])
		start = end
	}
	return e.recs
}

func (e *copyEmitter) flushEntries() error {
	if len(e.eend) > 0 {
		if err := e.ents.AddBatch(e.batch(e.ebuf, e.eend)); err != nil {
			return err
		}
	}
	e.ebuf, e.eend = e.ebuf[:0], e.eend[:0]
	return nil
}

func (e *copyEmitter) Flush() error {
	if err := e.flushEntries(); err != nil {
		return err
	}
	if len(e.dend) > 0 {
		if err := e.dirs.AddBatch(e.batch(e.dbuf, e.dend)); err != nil {
			return err
		}
	}
	e.dbuf, e.dend = e.dbuf[:0], e.dend[:0]
	return nil
}

func (r *runner) scanPhase() error {
	j := r.j
	sdir := j.Path("scan")
	os.RemoveAll(sdir) // a scan that was interrupted restarts from scratch
	for _, d := range []string{sdir, filepath.Join(sdir, "e"), filepath.Join(sdir, "d")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	ents := extsort.New(filepath.Join(sdir, "e"), int(r.o.Memory/sortShare), true)
	dirs := extsort.New(filepath.Join(sdir, "d"), int(r.o.Memory/(4*sortShare)), true)
	var exclude [][2]uint64
	for _, p := range []string{r.o.Dst, j.Dir} {
		var xs unix.Stat_t
		if unix.Stat(p, &xs) == nil {
			exclude = append(exclude, [2]uint64{xs.Dev, xs.Ino})
		}
	}
	ctr := r.rep.Phase("scan", "paths", "")
	st, err := scan.Scan(r.o.Src, scan.Options{
		Exclude: exclude,
		Jobs:    r.o.Jobs, OneFileSystem: r.o.OneFileSystem,
		NewEmitter: func() scan.Emitter { return &copyEmitter{ents: ents, dirs: dirs} },
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
	r.rep.End()
	ents, dirs = nil, nil
	debug.FreeOSMemory()
	rel := func(runs []string) []string {
		out := make([]string, len(runs))
		for i, p := range runs {
			out[i], _ = filepath.Rel(j.Dir, p)
		}
		return out
	}
	j.EntryRuns, j.DirRuns = rel(eruns), rel(druns)
	r.sum.Scan = st
	j.Scan, _ = json.Marshal(st)
	j.Dirs = uint32(st.Dirs)
	j.Phase = journal.PhaseSort
	return r.save()
}

func (r *runner) sortPhase() error {
	j := r.j
	abs := func(runs []string) []string {
		out := make([]string, len(runs))
		for i, p := range runs {
			out[i] = j.Path(p)
		}
		return out
	}
	tmp := j.Path("sorttmp")
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	ctr := r.rep.Phase("sort", "records", "")
	ctr.Total.Store(r.sum.Scan.Entries)
	mem := int(r.o.Memory / sortShare)
	dt, err := plan.BuildDirTable(abs(j.DirRuns), tmp, j.Path("dirs"), mem)
	if err != nil {
		return fmt.Errorf("sort directories: %w (the scan files may be damaged: rerun with --restart)", err)
	}
	dt.Close()
	ps, err := plan.Build(abs(j.EntryRuns), tmp, j.Path("plan"), j.Path("links"), mem, func(n int64) { ctr.Done.Store(n) })
	if err != nil {
		return fmt.Errorf("sort entries: %w (the scan files may be damaged: rerun with --restart)", err)
	}
	ctr.Done.Store(ps.Paths)
	r.rep.End()
	r.sum.Plan = ps
	j.Plan, _ = json.Marshal(ps)
	j.Phase = journal.PhaseMkdir
	if err := r.save(); err != nil {
		return err
	}
	os.RemoveAll(j.Path("scan"))
	os.RemoveAll(tmp)
	return nil
}

// planPhase starts the progress of a phase that walks the plan's groups
// from plan offset mark on; what lies below the mark is estimated from its
// share of the plan file.
func (r *runner) planPhase(name string, mark int64) *progress.Counters {
	ctr := r.rep.Phase(name, "inodes", "paths")
	ctr.Total.Store(r.sum.Plan.Groups)
	if mark > 0 {
		ctr.Done.Store(int64(float64(r.sum.Plan.Groups) * planShare(r.j, mark)))
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
		j.Watermark, j.GroupsBelow, j.LinkMark = m.Plan, m.Groups, m.Links
		j.GroupsDone = r.cp.Stats.Groups.Load()
		j.PathsDone = r.cp.Stats.Paths.Load()
		j.BytesDone = r.cp.Stats.Bytes.Load()
		return r.save()
	}
	from := copier.Marks{Plan: j.Watermark, Groups: j.GroupsBelow, Links: j.LinkMark}
	if err := r.cp.Copy(j.Path("plan"), j.Path("links"), from, ctr, ckpt, r.o.CheckpointEvery); err != nil {
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
	below := j.FinishBelow
	last := time.Now()
	var cur atomic.Uint32
	cur.Store(below)
	err := r.cp.Finish(below, false, func() {
		ctr.Done.Add(1)
		id := cur.Add(^uint32(0)) // the directory just finished
		if time.Since(last) < r.o.CheckpointEvery {
			return
		}
		last = time.Now()
		if err := r.syncDst(); err != nil {
			r.cp.Stop(err)
			return
		}
		j.FinishBelow = id
		if err := r.save(); err != nil {
			r.cp.Stop(err)
		}
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
	r.rm = remove.New(r.srcFd, r.dstFd, r.dirs, remove.Options{Checksum: r.o.Checksum, OnError: r.errs.add, DirCacheSize: r.dirCacheSize, SrcDevMap: r.srcDevMap, ProbeDir: j.Dir})
	stop := func() error {
		if r.stopped.Load() {
			return errInterrupted
		}
		return nil
	}
	if !j.FilesGone {
		ctr := r.planPhase("remove", j.RemoveMark)
		ckpt := func(off int64) error {
			j.RemoveMark = off
			return r.save()
		}
		if err := r.rm.Files(j.Path("plan"), j.RemoveMark, ctr, ckpt, r.o.CheckpointEvery, stop); err != nil {
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
	if err := r.rm.Dirs(j.RemoveDirs, func() { ctr.Done.Add(1) }, ckpt, r.o.CheckpointEvery, stop); err != nil {
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
		j.FilesGone, j.RemoveMark = false, 0
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
		os.Truncate(r.j.Path("errors.log"), 0)
		r.j.Errors = 0
		if err := r.j.Save(); err != nil {
			return r.stop(err)
		}
		if err := r.cp.InRoot(func() error { return nil }); err != nil {
			r.rep.Logf("warning: %v", err)
		}
	} else if err := r.cp.InRoot(r.j.Remove); err != nil {
		r.rep.Logf("warning: remove state directory: %v", err)
	}
	if err := r.syncDst(); err != nil {
		return r.stop(err)
	}
	if r.o.Move && r.o.RemoveRoot {
		if err := unix.Rmdir(r.o.Src); err != nil {
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
		fmt.Fprintf(r.o.Stderr, "hlcp: the move is not finished: the paths listed are still in SRC; its state is kept in %s: deal with them and rerun the same command\n", fsx.Quote(r.j.Dir))
	}
	return code, nil
}

func absPath(p string) string {
	a, _ := filepath.Abs(p)
	return a
}

func (r *runner) sumErrorsFromEarlier() bool { return r.prevErrors > 0 }

func (r *runner) fillSummary() {
	s := &r.sum
	s.Elapsed = time.Since(r.start)
	if cp := r.cp; cp != nil {
		st := &cp.Stats
		s.Dirs = st.Dirs.Load()
		s.Inodes = st.Groups.Load()
		s.Paths = st.Paths.Load()
		s.Links = st.Links.Load()
		s.Bytes = st.Bytes.Load()
		s.Reflinked = st.Cloned.Load()
		s.CopyRange = st.CopyRange.Load()
		s.Sendfile = st.Sendfile.Load()
		s.RingLinks = st.RingLinks.Load()
		s.Direct = st.Direct.Load()
		s.ReadWrite = st.ReadWrite.Load()
		s.SplitGroups = st.SplitGroups.Load()
		s.ExtraCopies = st.ExtraCopies.Load()
		s.ExtraBytes = st.ExtraBytes.Load()
		s.OutsideLinks = st.OutsideLinks.Load()
		s.Changed = st.Changed.Load()
	}
	if rm := r.rm; rm != nil {
		st := &rm.Stats
		s.Removed = st.Removed.Load()
		s.Kept = st.Kept.Load()
		s.DirsRemoved = st.DirsRemoved.Load()
		s.DirsKept = st.DirsKept.Load()
	}
	if r.errs != nil {
		s.Errors = r.prevErrors + r.errs.count()
		s.Warnings = r.errs.warnings()
	}
	s.PeakRSS = PeakRSS()
}

func (r *runner) printSummary(code int) {
	s := &r.sum
	s.ExitCode = code
	w := r.o.Stdout
	if r.o.Progress == progress.JSON {
		b, _ := json.Marshal(s)
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	if r.o.Quiet {
		return
	}
	c := progress.Count
	status := "done"
	switch code {
	case ExitPartial:
		status = "done with errors"
	case ExitStopped:
		status = "stopped"
	case ExitInterrupted:
		status = "interrupted"
	}
	fmt.Fprintf(w, "hlcp %s %s -> %s: %s in %s\n", s.Command, fsx.Quote(s.Src), fsx.Quote(s.Dst), status, progress.Duration(s.Elapsed))
	fmt.Fprintf(w, "  source        %s paths: %s directories, %s other paths (%s lstat'ed)\n",
		c(s.Scan.Dirs+s.Scan.Entries), c(s.Scan.Dirs), c(s.Scan.Entries), c(s.Scan.Lstats))
	fmt.Fprintf(w, "  inodes        %s (%s regular, %s symlinks, %s other); %s with several paths, largest %s paths\n",
		c(s.Plan.Groups), c(s.Plan.ByType[8]), c(s.Plan.ByType[10]),
		c(s.Plan.Groups-s.Plan.ByType[8]-s.Plan.ByType[10]), c(s.Plan.LinkGroups), c(s.Plan.MaxLinks))
	fmt.Fprintf(w, "  created       %s directories, %s inodes, %s hard links (%s of them in io_uring batches)\n", c(s.Dirs), c(s.Inodes), c(s.Links), c(s.RingLinks))
	fmt.Fprintf(w, "  data          %s (%s files reflinked, %s copy_file_range, %s sendfile, %s direct, %s read/write)\n",
		progress.Bytes(s.Bytes), c(s.Reflinked), c(s.CopyRange), c(s.Sendfile), c(s.Direct), c(s.ReadWrite))
	if s.OutsideLinks > 0 {
		fmt.Fprintf(w, "  note          %s inodes have hard links outside SRC; their paths inside SRC are linked together in DST\n", c(s.OutsideLinks))
	}
	if s.SplitGroups > 0 {
		fmt.Fprintf(w, "  split         %s inodes had more links than the destination allows per inode (EMLINK): copied again %s times\n", c(s.SplitGroups), c(s.ExtraCopies))
	} else if s.ExtraCopies > 0 {
		fmt.Fprintf(w, "  no hard links %s extra copies (%s) because the destination cannot hard-link\n", c(s.ExtraCopies), progress.Bytes(s.ExtraBytes))
	}
	if s.Changed > 0 {
		fmt.Fprintf(w, "  changed       %s files changed while being copied (listed above)\n", c(s.Changed))
	}
	for _, wmsg := range s.Warnings {
		fmt.Fprintf(w, "  warning       %s\n", wmsg)
	}
	if s.Command == "move" {
		fmt.Fprintf(w, "  removed       %s source paths, %s source directories", c(s.Removed), c(s.DirsRemoved))
		if s.RootRemoved {
			fmt.Fprintf(w, " and SRC itself")
		}
		fmt.Fprintf(w, "\n")
		if s.Kept > 0 || s.DirsKept > 0 {
			fmt.Fprintf(w, "  kept in SRC   %s paths, %s directories (listed above; rerun the move after fixing them)\n", c(s.Kept), c(s.DirsKept))
		}
	}
	fmt.Fprintf(w, "  errors        %s\n", c(s.Errors))
	fmt.Fprintf(w, "  peak memory   %s (budget %s)\n", progress.Bytes(s.PeakRSS), progress.Bytes(r.o.Memory))
}
