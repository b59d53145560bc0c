// Package job owns the commands (copy, move, verify, status) as sequences
// of the pipeline's stages, with the journal, progress display, error list
// and summary around them. copy.go is the runner; resume.go decides, before
// anything is written, whether a command resumes a job, starts one or is
// refused; phases.go runs the stages in order with their checkpoints;
// rerun.go answers a rerun of a finished command; summary.go reports the
// end; status.go and verify.go are the other commands.
package job

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/budget"
	"hlcp/internal/copier"
	"hlcp/internal/journal"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
	"hlcp/internal/remove"
	"hlcp/internal/testhook"
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
	// Sync: make DST a mirror of SRC, whatever it holds (hlcp sync); see
	// sync.go. DryRun, MaxDelete and MaxDeletePct are its.
	Sync   bool
	DryRun bool
	// MaxDeleteGiven: MaxDelete or MaxDeletePct (when > 0) is the limit;
	// otherwise (the zero value) it is half of DST's paths.
	MaxDeleteGiven bool
	MaxDelete      int64
	MaxDeletePct   float64
	// DiscardMoved lets --restart (or another job) discard a state that
	// may be that of a move which has removed source paths: what it moved
	// may then be overwritten in DST.
	DiscardMoved bool
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
	o.Memory = int64(budget.Budget(o.Memory).Or())
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

type runner struct {
	o            Options
	rep          *progress.Reporter
	j            *journal.Journal
	errs         *errLog
	srcFd        int
	dstFd        int
	start        time.Time
	sum          Summary
	ctx          context.Context
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
	// place is where the state directory is; stateParent, when not -1,
	// is the fd of --state's parent directory (place.Parent).
	place       journal.Place
	stateParent int
	// copied: a move's record of each group's copy.
	copied  *plan.Copied
	lastCtr *progress.Counters
}

func (o *Options) command() string {
	switch {
	case o.Move:
		return "move"
	case o.Sync:
		return "sync"
	}
	return "copy"
}

// Copy runs `hlcp copy`, or `hlcp move` with Options.Move. It returns the exit code and an error to print
// (nil when the summary says it all).
func Copy(ctx context.Context, o Options) (int, error) {
	o.defaults()
	r := &runner{ctx: ctx, o: o, start: time.Now(), srcFd: -1, dstFd: -1, stateParent: -1}
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
	if r.copied != nil {
		r.copied.Close()
	}
	if r.j != nil {
		r.j.Close()
	}
	if r.dstFd >= 0 {
		unix.Close(r.dstFd)
	}
	if r.stateParent >= 0 {
		unix.Close(r.stateParent)
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
	mode := o.Progress
	if o.Quiet {
		mode = progress.Quiet
	}
	r.rep = progress.New(o.Stderr, mode, o.Interval)
	defer r.rep.Close()
	testhook.KillAfter(r.progressNow) // (a sync that repairs DST runs inside openJob)

	if code, done := r.movedAway(); done {
		return code, nil
	}
	if err := r.preflight(); err != nil {
		return ExitUsage, err
	}
	code, err := r.openJob()
	if err != nil || code >= 0 {
		return code, err
	}
	r.j.Reserve()
	r.errs, err = newErrLog(r.rep, r.j.StateDir())
	if err != nil {
		return ExitStopped, err
	}
	defer r.errs.close()
	if r.sum.Resumed {
		r.rep.Logf("resuming the job from phase %s (attempt %d)", r.j.Phase, r.j.Attempts)
	}

	if err := r.phases(); err != nil {
		return r.stop(err)
	}
	return r.finishJob()
}

// progressNow is the current phase and its count, for the kill hook.
func (r *runner) progressNow() (string, int64, bool) {
	p, c := r.rep.Current()
	if c == nil {
		return p, 0, false
	}
	fresh := c != r.lastCtr
	r.lastCtr = c
	return p, c.Done.Load() + c.Paths.Load(), fresh
}

// ErrInterrupted is the cause the command's context ends with on SIGINT
// or SIGTERM (see cmd/hlcp): every phase then checkpoints and returns, and
// the exit code is ExitInterrupted.
var ErrInterrupted = errors.New("interrupted")

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
	testhook.CrashAt(r.j.Phase)
	testhook.Pause("saved-" + r.j.Phase)
	return nil
}

// syncDst makes everything written to the destination filesystem durable.
func (r *runner) syncDst() error {
	if err := unix.Syncfs(r.dstFd); err != nil {
		return fmt.Errorf("syncfs destination: %w", err)
	}
	return nil
}
