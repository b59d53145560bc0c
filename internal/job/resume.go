package job

import (
	"errors"
	"fmt"
	"hlcp/internal/msg"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/journal"
)

// preflight checks the arguments before anything is opened for writing.
func (r *runner) preflight() error {
	o := &r.o
	if err := checkSrc(o.Src); err != nil {
		return err
	}
	if in, err := inside(o.Dst, o.Src); err != nil {
		return usagef("check DST: %w", err)
	} else if in {
		return usagef("DST %s is inside SRC %s", msg.Quote(o.Dst), msg.Quote(o.Src))
	}
	if o.State != "" {
		if in, _ := inside(o.State, o.Src); in {
			return usagef("--state %s is inside SRC %s", msg.Quote(o.State), msg.Quote(o.Src))
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
			return usagef("--state %s is inside DST %s: leave --state out to keep the state in DST/%s, or give a directory outside DST", msg.Quote(o.State), msg.Quote(o.Dst), StateName)
		}
		if b := filepath.Base(absPath(o.State)); b == "/" || b == "." || b == ".." {
			return usagef("--state %s: give a directory for the state, not a root", msg.Quote(o.State))
		}
	} else if _, err := os.Lstat(filepath.Join(o.Src, StateName)); err == nil {
		return usagef("SRC has an entry named %s, which hlcp uses for its state inside DST: pass --state DIR to keep the state elsewhere", StateName)
	}
	return nil
}

// openDst opens DST (which must be a directory, not a symlink) as r.dstFd.
func (r *runner) openDst() error {
	fd, err := unix.Open(r.o.Dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return usagef("open DST %s: %w", msg.Quote(r.o.Dst), err)
	}
	r.dstFd = fd
	return nil
}

// statePlace is where the job's state directory is: DST/.hlcp-state
// (reached through DST's fd), or --state DIR (its parent is opened by
// the path the user gave, DIR itself is never followed). ok is false when
// DST does not exist yet and there is no --state: no job can be there.
func (r *runner) statePlace() (p journal.Place, ok bool, err error) {
	if r.o.State == "" {
		if r.dstFd < 0 {
			return p, false, nil
		}
		return journal.Place{Parent: r.dstFd, Name: StateName, Path: filepath.Join(r.o.Dst, StateName), InDst: true}, true, nil
	}
	if r.stateParent < 0 {
		abs := absPath(r.o.State)
		fd, err := unix.Open(filepath.Dir(abs), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return p, false, usagef("--state %s: its parent directory: %w", msg.Quote(r.o.State), err)
		}
		r.stateParent = fd
	}
	return journal.Place{Parent: r.stateParent, Name: filepath.Base(absPath(r.o.State)), Path: r.o.State}, true, nil
}

// openJob finds the job's state and decides: resume it, start a new job,
// or refuse. It returns code -1 (and r.j set) to go on, or the exit code
// of a refusal, or of a rerun of a finished command.
func (r *runner) openJob() (int, error) {
	o := &r.o
	fd, err := unix.Open(o.Src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return ExitUsage, usagef("open SRC %s: %w", msg.Quote(o.Src), err)
	}
	r.srcFd = fd
	exists, err := dstExists(o.Dst)
	if err != nil {
		return ExitUsage, err
	}
	empty := true
	if exists {
		if err := r.openDst(); err != nil {
			return ExitUsage, err
		}
		stateName := StateName
		if o.State != "" {
			stateName = ""
		}
		if empty, err = emptyDir(r.dstFd, stateName); err != nil {
			return ExitUsage, usagef("DST %s: %w", msg.Quote(o.Dst), err)
		}
	}
	place, ok, err := r.statePlace()
	if err != nil {
		return ExitUsage, err
	}
	var old *journal.Journal
	restarted := false
	if ok && o.Sync && o.DryRun {
		// A dry run changes nothing, the state included: it neither
		// resumes nor discards one, and compares DST without it.
		r.place = place
		return r.mirror(exists)
	}
	if ok {
		r.place = place
		var code int
		if old, restarted, code, err = r.findJob(place); code >= 0 {
			return code, err
		}
	}
	if old != nil && !exists {
		old.Close()
		return ExitUsage, usagef("the job in --state %s is for DST %s, which does not exist: rerun that job's command with its DST, or pass --restart to start over", msg.Quote(o.State), msg.Quote(o.Dst))
	}
	if restarted {
		empty = true // what is there is the old job's partial copy: overwritten
	}
	if o.Sync && (o.DryRun || old == nil && !empty) {
		return r.mirror(exists)
	}
	if old == nil && !empty {
		return r.finishedRerun()
	}
	if !exists {
		if err := os.Mkdir(o.Dst, 0o700); err != nil {
			return ExitUsage, usagef("create DST: %w", err)
		}
		if err := r.openDst(); err != nil {
			return ExitUsage, err
		}
		if place, _, err = r.statePlace(); err != nil {
			return ExitUsage, err
		}
		r.place = place
	}
	id, err := r.identity()
	if err != nil {
		return ExitUsage, err
	}
	if old != nil {
		if err := r.sameJob(old, id); err != nil {
			old.Close()
			return ExitUsage, err
		}
		if old.Removing {
			return r.finishRemoval(old)
		}
		r.j = old
		r.j.Attempts++
		r.prevErrors = old.Errors
		r.sum.Resumed = true
		return -1, nil
	}
	// DST (new, or empty) must not pass a default ACL, its own or one
	// inherited from its parent, to what the copy creates: files would
	// get ACL entries the source does not have. The source root's own
	// xattrs and ACLs are applied at the end.
	unix.Fremovexattr(r.dstFd, "system.posix_acl_default")
	unix.Fremovexattr(r.dstFd, "system.posix_acl_access")
	if r.j, err = journal.Create(r.place, id); err != nil {
		if !exists {
			unix.Rmdir(o.Dst) // made just now, and empty: a refusal changes nothing
		}
		return ExitUsage, usagef("%w", err)
	}
	return -1, nil
}

// findJob opens the state at place and decides what becomes of it: a job
// to resume (old), none (nil), or one discarded (restarted: --restart, or
// a damaged state --restart may discard). code >= 0 is a refusal.
func (r *runner) findJob(place journal.Place) (old *journal.Journal, restarted bool, code int, err error) {
	old, err = journal.Open(place, false)
	var de *journal.DamagedError
	var ue *journal.UnsafeError
	switch {
	case errors.Is(err, journal.ErrNoJob):
		if place.InDst {
			// What a crash while a state was made, or removed, left
			// (hlcp's marker at most) goes, so that DST is compared
			// without it.
			if err := journal.Discard(place); err != nil {
				return nil, false, ExitUsage, usagef("%w", err)
			}
		}
		return nil, false, -1, nil
	case errors.As(err, &ue):
		return nil, false, ExitUsage, usagef("%w; hlcp keeps its state only in a directory of its own (owned by root or by you, mode 0700): move it away, or give another with --state", err)
	case errors.As(err, &de):
		if code, err := r.damagedState(de); code >= 0 {
			return nil, false, code, err
		}
		return nil, true, -1, nil
	case err != nil:
		return nil, false, ExitUsage, usagef("read the job state: %w", err)
	}
	if code, err := r.existingJob(old); code >= 0 {
		old.Close()
		return nil, false, code, err
	}
	if old.ID.Command == "sync" && old.Phase == journal.PhaseMirror && r.o.Sync {
		// A sync that was repairing DST: its state is only working
		// files; this run starts again.
		old.Close()
		if err := journal.Discard(place); err != nil {
			return nil, false, ExitUsage, usagef("discard the old state: %w", err)
		}
		return nil, false, -1, nil
	}
	if r.o.Restart {
		old.Close()
		if err := journal.Discard(place); err != nil {
			return nil, false, ExitUsage, usagef("discard the old state: %w", err)
		}
		return nil, true, -1, nil
	}
	return old, false, -1, nil
}

// movedWarning is the refusal to discard, or to overwrite, a DST that may
// hold the only copy of what a move removed.
func movedWarning(what string) string {
	return what + ": DST may hold the only copy of files that the move removed from its source. " +
		"Rerun that move to finish it. To throw its state away anyway, and let a new job overwrite what it moved, " +
		"pass --restart --discard-moved-data"
}

// damagedState decides on a state that cannot be read: refused, unless
// --restart discards it (and, when it may be that of a move that removed
// sources, --discard-moved-data too). It returns -1 when it was discarded.
func (r *runner) damagedState(de *journal.DamagedError) (int, error) {
	o := &r.o
	if de.Foreign {
		return ExitUsage, usagef("%w; hlcp keeps its state in a directory of its own: move that one away, or give another with --state", de)
	}
	if !o.Restart {
		if de.MayHoldMovedData() {
			return ExitUsage, usagef("%s", movedWarning(de.Error()))
		}
		return ExitUsage, usagef("%w: the job cannot be resumed from it; pass --restart to discard it and copy again over what is in DST", de)
	}
	if de.MayHoldMovedData() && !o.DiscardMoved {
		return ExitUsage, usagef("%s", movedWarning(de.Error()+" and --restart was given"))
	}
	if err := journal.Discard(r.place); err != nil {
		return ExitUsage, usagef("discard the damaged state: %w", err)
	}
	r.rep.Logf("discarded the damaged job state in %s", msg.Quote(r.place.Path))
	return -1, nil
}

// existingJob applies the guard of a move that removed sources to a valid
// state: neither --restart nor another command may discard it without
// --discard-moved-data. It returns -1 to go on.
func (r *runner) existingJob(old *journal.Journal) (int, error) {
	o := &r.o
	if !old.MovedData() || o.DiscardMoved {
		return -1, nil
	}
	if o.Restart || old.ID.Src != absPath(o.Src) || !o.Move {
		return ExitUsage, usagef("%s", movedWarning(fmt.Sprintf("DST holds a move (`hlcp move %s %s`) that has already removed source paths", msg.Quote(old.ID.Src), msg.Quote(old.ID.Dst))))
	}
	return -1, nil
}

// sameJob checks that the state is this command's job, and says exactly
// what differs when it is not. Device numbers are not part of a job's
// identity: a reboot can renumber a loop device or a btrfs subvolume (see
// remapDevices).
func (r *runner) sameJob(old *journal.Journal, id journal.Identity) error {
	oid, nid := old.ID, id
	oid.SrcDev, oid.DstDev, nid.SrcDev, nid.DstDev = 0, 0, 0, 0
	if oid == nid {
		if old.ID.SrcDev != id.SrcDev {
			r.srcDevMap = map[uint64]uint64{old.ID.SrcDev: id.SrcDev}
		}
		return nil
	}
	started := fmt.Sprintf("`%s` (options %s)", rerunCommand(old.ID, r.o.State), msg.Quote(old.ID.Options))
	switch {
	case oid.Command == nid.Command && oid.Src == nid.Src && oid.Dst == nid.Dst && oid.SrcIno != nid.SrcIno:
		return usagef("SRC %s was recreated since the job %s started: its root is inode %d now, not %d, so the job's scan describes a tree that is gone. Pass --restart to copy the SRC that is there now",
			msg.Quote(r.o.Src), started, nid.SrcIno, oid.SrcIno)
	case oid.Command == nid.Command && oid.Src == nid.Src && oid.Dst == nid.Dst && oid.DstIno != nid.DstIno:
		return usagef("DST %s was recreated since the job %s started (its root is inode %d now, not %d): its state in %s belongs to the old one. Pass --restart to start over",
			msg.Quote(r.o.Dst), started, nid.DstIno, oid.DstIno, msg.Quote(old.Dir))
	}
	return usagef("DST holds an unfinished job started as %s; rerun that command to finish it, or pass --restart to discard its state", started)
}

// dstExists says whether DST exists as a directory (not a symlink), and
// checks that its parent exists when it does not.
func dstExists(dst string) (bool, error) {
	fi, err := os.Lstat(dst)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			parent := filepath.Dir(dst)
			pfi, perr := os.Stat(parent)
			if perr != nil || !pfi.IsDir() {
				return false, usagef("DST %s: its parent directory %s does not exist", msg.Quote(dst), msg.Quote(parent))
			}
			return false, nil
		}
		return false, usagef("DST %s: %w", msg.Quote(dst), err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return false, usagef("DST %s is a symlink; hlcp never follows symlinks: give the directory itself", msg.Quote(dst))
	}
	if !fi.IsDir() {
		return false, usagef("DST %s exists and is not a directory", msg.Quote(dst))
	}
	return true, nil
}

// emptyDir reports whether the directory fd holds nothing but an entry
// named except (the job's state directory, when except is not "").
func emptyDir(fd int, except string) (bool, error) {
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	d := os.NewFile(uintptr(dfd), "DST")
	defer d.Close()
	for {
		names, err := d.Readdirnames(64)
		for _, n := range names {
			if n != except {
				return false, nil
			}
		}
		if err == io.EOF || len(names) == 0 {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// finishRemoval ends a job that was killed while its finished state was
// being removed: the rest of the state goes, DST's root gets its times
// again, and (move --remove-root) SRC's root goes; then the command has
// nothing left to do.
func (r *runner) finishRemoval(j *journal.Journal) (int, error) {
	r.j = j
	t := j.RootTimes
	if err := j.Remove(t); err != nil {
		return ExitStopped, fmt.Errorf("remove the finished job's state: %w", err)
	}
	if err := fsx.Futimens(r.dstFd, t[:]); err != nil {
		return ExitStopped, fmt.Errorf("set DST's times: %w", err)
	}
	if err := r.syncDst(); err != nil {
		return ExitStopped, err
	}
	if r.o.Move && r.o.RemoveRoot {
		if empty, err := emptyDir(r.srcFd, ""); err == nil && empty {
			if err := r.removeSrcRoot(); err != nil {
				return ExitPartial, fmt.Errorf("kept SRC's root: %w", err)
			}
		}
	}
	return r.alreadyDone("already complete: the job had finished; the removal of its state is done now")
}
