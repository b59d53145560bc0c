package job

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/budget"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/journal"
	"hlcp/internal/mirror"
	"hlcp/internal/msg"
	"hlcp/internal/progress"
)

// Sync runs `hlcp sync`: DST becomes exactly what `hlcp copy SRC DST` would
// have made. A new or empty DST is copied (resumable, as a copy is); a DST
// with anything in it is repaired in place by internal/mirror, in time set
// by what changed. With DryRun nothing changes: the actions are listed.
func Sync(ctx context.Context, o Options) (int, error) {
	o.Sync, o.Move = true, false
	return Copy(ctx, o)
}

// mirror repairs a DST that is not empty (or, with DryRun, lists what it
// would do to any DST). The job's state directory holds the working files;
// a run killed at any moment leaves DST consistent, and the rerun starts
// again and converges.
func (r *runner) mirror(exists bool) (int, error) {
	o := &r.o
	work, done, err := r.mirrorWork(exists)
	if err != nil {
		return ExitUsage, err
	}
	finished := false
	finish := func(ok bool) {
		if !finished {
			finished = true
			done(ok)
		}
	}
	defer finish(false)
	dstFd := r.dstFd
	if !exists { // a dry run to a DST that does not exist: an empty one
		tmp, err := os.MkdirTemp("", "hlcp-empty-")
		if err != nil {
			return ExitStopped, err
		}
		defer os.Remove(tmp)
		if dstFd, err = unix.Open(tmp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return ExitStopped, err
		}
		defer unix.Close(dstFd)
	}
	errs := &errLog{rep: r.rep, warns: map[string]bool{}, closed: true}
	r.errs = errs
	actions, err := newActionLog(work, o)
	if err != nil {
		return ExitStopped, err
	}
	skip := ""
	if o.State == "" {
		skip = StateName
	}
	if o.DryRun {
		r.rep.Logf("dry run: listing what would change in DST %s; nothing is changed", msg.Quote(o.Dst))
	} else {
		r.rep.Logf("DST %s is not empty: changing only what differs from SRC", msg.Quote(o.Dst))
	}
	maxDelete := int64(-1) // half of DST's paths
	if o.MaxDeleteGiven {
		maxDelete = o.MaxDelete
	}
	st, err := mirror.Run(r.ctx, mirror.Options{
		Src: o.Src, Dst: o.Dst, SrcFd: r.srcFd, DstFd: dstFd, Work: work, Skip: skip,
		Jobs: o.Jobs, Memory: o.Memory, Checksum: o.Checksum, OneFileSystem: o.OneFileSystem,
		Owner: os.Geteuid() == 0, DryRun: o.DryRun, MaxDelete: maxDelete, MaxDeletePct: o.MaxDeletePct,
		Progress: r.rep, OnError: errs.add, OnWarn: errs.warn, Action: actions.add,
	})
	r.rep.Close()
	if err == nil {
		err = actions.print(o.Stdout)
	}
	if err == nil && !o.DryRun {
		err = r.syncDst()
	}
	code := ExitOK
	switch {
	case errors.Is(err, mirror.ErrTooManyDeletes):
		finish(false) // refused before any change: DST's root gets its times back
		return ExitUsage, usagef("%w", err)
	case errors.Is(err, ErrInterrupted):
		code, err = ExitInterrupted, errors.New("interrupted: rerun the same command; the sync starts again from what DST holds")
	case err != nil:
		code, err = ExitStopped, fmt.Errorf("sync stopped: %w\nrerun the same command: the sync starts again from what DST holds", err)
	case errs.count() > 0:
		code = ExitPartial
	}
	finish(code == ExitOK || code == ExitPartial) // before the summary: a reader that goes away must not leave the state
	r.printSyncSummary(st, code, errs)
	return code, err
}

// mirrorWork is the directory for the mirror's working files: the job's
// state directory (made now, removed by done); for a dry run, which must
// change nothing in DST, a temporary directory instead.
//
// done(ok) removes it; then DST's root gets SRC's times when the mirror
// ran to its end (ok), and its own times back otherwise (a refused or
// stopped run leaves DST's root as it found it, but for its ctime).
func (r *runner) mirrorWork(exists bool) (*fsx.Dir, func(ok bool), error) {
	if r.o.DryRun {
		tmp, err := os.MkdirTemp("", "hlcp-sync-")
		if err != nil {
			return nil, nil, err
		}
		d, err := fsx.OpenDir(tmp)
		if err != nil {
			os.RemoveAll(tmp)
			return nil, nil, err
		}
		return d, func(bool) { d.Close(); os.RemoveAll(tmp) }, nil
	}
	id, err := r.identity()
	if err != nil {
		return nil, nil, err
	}
	var before unix.Stat_t
	if err := unix.Fstat(r.dstFd, &before); err != nil {
		return nil, nil, err
	}
	j, err := journal.CreateIn(r.place, id, journal.PhaseMirror)
	if err != nil {
		return nil, nil, usagef("%w", err)
	}
	done := func(ok bool) {
		// The state's removal changes DST's root: it gets SRC's times
		// again (its other metadata the mirror set, when it differed).
		if err := j.Remove([2]unix.Timespec{}); err != nil {
			r.rep.Logf("warning: remove the state directory: %v", err)
		}
		j.Close()
		times := []unix.Timespec{before.Atim, before.Mtim}
		var st unix.Stat_t
		if ok && unix.Fstat(r.srcFd, &st) == nil {
			times = []unix.Timespec{st.Atim, st.Mtim}
		}
		fsx.Futimens(r.dstFd, times)
	}
	return j.StateDir(), done, nil
}

// actionLog keeps a dry run's actions in a sort by path, on disk (a dry
// run of a sync into an empty DST lists every path), and prints them.
type actionLog struct {
	o    *Options
	s    *extsort.Sorter
	dir  *fsx.Dir
	rec  []byte
	errs error
}

func newActionLog(work *fsx.Dir, o *Options) (*actionLog, error) {
	a := &actionLog{o: o}
	if !o.DryRun {
		return a, nil
	}
	d, err := work.Mkdir("actions")
	if err != nil {
		return nil, err
	}
	a.dir, a.s = d, extsort.New(d, budget.Budget(o.Memory).VerifyDiffs(), false)
	return a, nil
}

func (a *actionLog) add(code, path, detail string) {
	if a.s == nil {
		return
	}
	a.rec = append(append(append(append(append(a.rec[:0], path...), 0), code...), 0), detail...)
	if err := a.s.Add(a.rec); err != nil && a.errs == nil {
		a.errs = err
	}
}

// print writes the actions, one line each in path order: the code in a
// fixed column, the path (quoted where it needs to be), the details.
func (a *actionLog) print(w io.Writer) error {
	if a.s == nil {
		return nil
	}
	defer func() {
		a.dir.Close()
	}()
	if a.errs != nil {
		return a.errs
	}
	runs, _, _, err := a.s.Finish()
	if err != nil {
		return err
	}
	rd, wait := extsort.MergeStream(runs, nil, budget.Budget(a.o.Memory).VerifyMerge(), nil)
	defer wait()
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		f := bytes.SplitN(rec, []byte{0}, 3)
		if len(f) != 3 {
			return fmt.Errorf("bad action record")
		}
		line := fmt.Sprintf("%-7s %s", f[1], msg.Quote(string(f[0])))
		if len(f[2]) > 0 {
			line += "  (" + string(f[2]) + ")"
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
}

// printSyncSummary prints what the sync did (or would do).
func (r *runner) printSyncSummary(st mirror.Stats, code int, errs *errLog) {
	o := &r.o
	if o.Progress == progress.JSON {
		b, _ := json.Marshal(struct {
			Command  string        `json:"command"`
			Src      string        `json:"src"`
			Dst      string        `json:"dst"`
			DryRun   bool          `json:"dry_run"`
			Stats    mirror.Stats  `json:"stats"`
			Changes  int64         `json:"changes"`
			Elapsed  time.Duration `json:"elapsed_ns"`
			PeakRSS  int64         `json:"peak_rss_bytes"`
			ExitCode int           `json:"exit_code"`
		}{"sync", o.Src, o.Dst, o.DryRun, st, st.Changes(), time.Since(r.start), PeakRSS(), code})
		fmt.Fprintf(o.Stdout, "%s\n", b)
		return
	}
	if o.Quiet {
		return
	}
	c := progress.Count
	w := o.Stdout
	verb := "done"
	switch {
	case code == ExitInterrupted:
		verb = "interrupted"
	case code == ExitStopped:
		verb = "stopped"
	case o.DryRun:
		verb = "dry run, nothing changed"
	case code == ExitPartial:
		verb = "done with errors"
	}
	fmt.Fprintf(w, "hlcp sync %s -> %s: %s in %s; %s changes\n", msg.Quote(o.Src), msg.Quote(o.Dst), verb, progress.Duration(time.Since(r.start)), c(st.Changes()))
	fmt.Fprintf(w, "  compared      %s paths in SRC, %s in DST\n", c(st.Compared.SrcPaths), c(st.Compared.DstPaths))
	fmt.Fprintf(w, "  kept          %s paths\n", c(st.Kept))
	fmt.Fprintf(w, "  copied        %s inodes (%s); %s reused (data DST had at other paths: renames)\n", c(st.Copied), progress.Bytes(st.Bytes), c(st.Renamed))
	fmt.Fprintf(w, "  linked        %s new paths, %s relinked\n", c(st.Linked), c(st.Relinked))
	fmt.Fprintf(w, "  deleted       %s paths\n", c(st.Deleted))
	fmt.Fprintf(w, "  metadata      %s inodes fixed; %s directories made, %s fixed\n", c(st.MetaFixed), c(st.DirsMade), c(st.DirsFixed))
	fmt.Fprintf(w, "  errors        %s\n", c(errs.count()))
	for _, wmsg := range errs.warnings() {
		fmt.Fprintf(w, "  warning       %s\n", wmsg)
	}
	fmt.Fprintf(w, "  peak memory   %s (budget %s)\n", progress.Bytes(PeakRSS()), progress.Bytes(o.Memory))
}
