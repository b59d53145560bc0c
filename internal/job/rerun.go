package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"hlcp/internal/msg"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"hlcp/internal/differ"
	"hlcp/internal/fsx"
	"hlcp/internal/journal"
	"hlcp/internal/progress"
)

// maxDirTimes bounds the directory times that the rerun of a finished
// copy sets again: a copy that finished but was killed before it set its
// root's times differs in one; a tree with thousands more was not made by
// this copy.
const maxDirTimes = 1000

// finishedRerun answers a command run again on a DST that holds no job
// and is not empty: scripts rerun a command until it succeeds, so a rerun
// of a finished command must succeed too. A move whose SRC is empty has
// nothing left to move. A copy whose DST already is SRC's copy is
// complete; where it differs only in directory times (a kill after the
// state was removed and before the root's times were set again), they
// are set. Anything else is refused: hlcp copy fills a new or empty DST.
func (r *runner) finishedRerun() (int, error) {
	o := &r.o
	if o.Move {
		empty, err := emptyDir(r.srcFd, "")
		if err != nil {
			return ExitUsage, usagef("SRC %s: %w", msg.Quote(o.Src), err)
		}
		if empty {
			return r.alreadyDone("nothing left to move: SRC is empty (a finished move leaves it so)")
		}
		return ExitUsage, usagef("DST %s is not empty and holds no unfinished job (hlcp move moves SRC into a new or empty DST, or finishes its own job there)", msg.Quote(o.Dst))
	}
	refuse := func(why string) (int, error) {
		return ExitUsage, usagef("DST %s is not empty, holds no unfinished job, and is not a copy of SRC (%s): hlcp copy makes a new or empty DST an exact copy of SRC", msg.Quote(o.Dst), why)
	}
	// A finished copy has the same names at the top: a DST that does not
	// (another tree, a wrong path) is refused without reading it all.
	if d := topDiffers(r.srcFd, r.dstFd); d != "" {
		return refuse(d)
	}
	tmp := os.TempDir()
	for _, t := range []string{o.Src, o.Dst} {
		if in, err := inside(tmp, t); err != nil || in {
			return refuse("not compared: the temporary directory is inside it")
		}
	}
	r.rep.Logf("DST %s is not empty and holds no unfinished job: checking whether it already is a copy of SRC", msg.Quote(o.Dst))
	var dirTimes []string
	var other []differ.Diff
	var nOther int64
	res, err := differ.Run(r.ctx, differ.Options{
		Src: o.Src, Dst: o.Dst, Jobs: o.Jobs, Memory: o.Memory, TmpDir: tmp,
		What: differ.All, OneFileSystem: o.OneFileSystem, Progress: r.rep,
	}, differ.ConsumerFunc(func(d differ.Diff) error {
		if d.Code == differ.CodeMtime && d.Src.Type == fsx.TypeDir && len(dirTimes) < maxDirTimes {
			dirTimes = append(dirTimes, d.Path)
			return nil
		}
		nOther++
		if len(other) < 5 {
			other = append(other, d)
		}
		return nil
	}))
	r.rep.End()
	if err != nil {
		return ExitUsage, usagef("DST %s is not empty, and it could not be compared with SRC: %w", msg.Quote(o.Dst), err)
	}
	if nOther == 0 {
		var notDir []differ.Diff
		for _, p := range dirTimes {
			if err := r.setDirTimes(p); err != nil {
				nOther++
				notDir = append(notDir, differ.Diff{Code: differ.CodeMtime, Path: p, Detail: err.Error()})
			}
		}
		other = append(other, notDir[:min(len(notDir), 5)]...)
	}
	if nOther > 0 {
		var shown []string
		for _, d := range other[:min(len(other), 3)] {
			shown = append(shown, d.Code+" "+msg.Quote(d.Path))
		}
		return refuse(fmt.Sprintf("%s differences, such as %s; `hlcp verify SRC DST` lists them", progress.Count(nOther+int64(len(dirTimes))), strings.Join(shown, ", ")))
	}
	if err := r.syncDst(); err != nil {
		return ExitStopped, err
	}
	done := fmt.Sprintf("already complete: DST is an exact copy of SRC (%s paths compared)", progress.Count(res.Matched))
	if len(dirTimes) > 0 {
		done += fmt.Sprintf("; the times of %s directories were set again", progress.Count(int64(len(dirTimes))))
	}
	return r.alreadyDone(done)
}

// alreadyDone reports a rerun that found nothing to do, and succeeds.
func (r *runner) alreadyDone(why string) (int, error) {
	r.rep.Close()
	r.sum.AlreadyDone = why
	r.fillSummary()
	s := &r.sum
	s.ExitCode = ExitOK
	if r.o.Progress == progress.JSON {
		b, _ := json.Marshal(s)
		fmt.Fprintf(r.o.Stdout, "%s\n", b)
	} else if !r.o.Quiet {
		fmt.Fprintf(r.o.Stdout, "hlcp %s %s -> %s: %s\n", s.Command, msg.Quote(s.Src), msg.Quote(s.Dst), why)
	}
	return ExitOK, nil
}

// setDirTimes gives the directory rel of DST the times of SRC's: both are
// reached one component at a time from their roots, never through a
// symlink, and must be directories.
func (r *runner) setDirTimes(rel string) error {
	sfd, err := openRel(r.srcFd, rel, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("SRC: %w", err)
	}
	defer unix.Close(sfd)
	dfd, err := openRel(r.dstFd, rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("DST: %w", err)
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return err
	}
	if err := fsx.Futimens(dfd, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// openRel opens the path rel (relative, "" or "." for root itself) below
// the directory root one component at a time, never following a symlink;
// every component must be a directory.
func openRel(root int, rel string, flags int) (int, error) {
	fd, err := unix.Openat(root, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	parts := strings.Split(rel, "/")
	if rel == "" || rel == "." {
		parts = nil
	}
	for i, p := range parts {
		f := unix.O_PATH | unix.O_DIRECTORY
		if i == len(parts)-1 {
			f = flags
		}
		next, err := fsx.OpenBeneath(fd, p, f)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	if len(parts) == 0 && flags&unix.O_PATH == 0 {
		next, err := unix.Openat(fd, ".", flags|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// topDiffers compares the names at the top of two directories, and says
// how they differ ("" when they hold the same names).
func topDiffers(srcFd, dstFd int) string {
	list := func(fd int) (map[string]bool, error) {
		dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		f := os.NewFile(uintptr(dfd), "dir")
		defer f.Close()
		m := make(map[string]bool)
		for len(m) <= 100_000 {
			names, err := f.Readdirnames(1024)
			for _, n := range names {
				m[n] = true
			}
			if err != nil || len(names) == 0 {
				break
			}
		}
		return m, nil
	}
	a, err := list(srcFd)
	if err != nil {
		return "SRC: " + err.Error()
	}
	b, err := list(dstFd)
	if err != nil {
		return "DST: " + err.Error()
	}
	for n := range a {
		if !b[n] {
			return fmt.Sprintf("%s is only in SRC", msg.Quote(n))
		}
	}
	for n := range b {
		if !a[n] {
			return fmt.Sprintf("%s is only in DST", msg.Quote(n))
		}
	}
	return ""
}

// movedAway answers a rerun of a finished `hlcp move --remove-root`: SRC
// is gone, and DST holds what was moved and no job. Anything else (no
// --remove-root, a DST with a job or none at all) goes on to the usual
// checks, which refuse a missing SRC.
func (r *runner) movedAway() (int, bool) {
	o := &r.o
	if !o.Move || !o.RemoveRoot || o.State != "" {
		return 0, false
	}
	if _, err := os.Lstat(o.Src); !errors.Is(err, os.ErrNotExist) {
		return 0, false
	}
	if exists, err := dstExists(o.Dst); err != nil || !exists {
		return 0, false
	}
	if err := r.openDst(); err != nil {
		return 0, false
	}
	done := false
	defer func() {
		if !done { // the usual checks open DST again
			unix.Close(r.dstFd)
			r.dstFd = -1
		}
	}()
	place, _, _ := r.statePlace()
	if j, err := journal.Open(place, true); !errors.Is(err, journal.ErrNoJob) {
		if j != nil {
			j.Close()
		}
		return 0, false
	}
	if empty, err := emptyDir(r.dstFd, StateName); err != nil || empty {
		return 0, false
	}
	done = true
	code, _ := r.alreadyDone("nothing left to move: SRC is gone (a finished move --remove-root leaves it so)")
	return code, true
}
