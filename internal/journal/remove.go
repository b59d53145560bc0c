package journal

import (
	"errors"
	"fmt"
	"hlcp/internal/msg"
	"strings"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
)

// The names hlcp makes in a state directory: the journal's own files, the
// stages' files (plan: plan, links, dirs, dirs.idx, copied; each written
// under name.tmp first) and the sorts' subdirectories of run files. Only
// these are ever deleted, and only from a directory with the marker.
var (
	ownFiles = []string{
		stateFile, markerFile, MovedFile, ErrorLog, reserveName,
		"plan", "links", "dirs", "dirs.idx", "copied",
	}
	// ownDirs: subdirectory -> its own subdirectories (the rest of its
	// entries must be run files).
	ownDirs = map[string][]string{
		"scan":    {"e", "d"},
		"sorttmp": {"linkruns"},
	}
	// ownTrees: subdirectories whose whole content hlcp makes (a sync's
	// working files, in as many sorts as it needs): removed with all that
	// is in them, never through a symlink.
	ownTrees = map[string]bool{"mirror": true}
)

func ownFile(name string) bool {
	base := strings.TrimSuffix(name, ".tmp")
	for _, n := range ownFiles {
		if base == n {
			return true
		}
	}
	// The remover's probe of the destination's time resolution.
	if rest, ok := strings.CutPrefix(name, ".hlcp-probe-"); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
		return true
	}
	return false
}

func runFile(name string) bool {
	for _, p := range []string{"run-", "merge-"} {
		if rest, ok := strings.CutPrefix(name, p); ok && len(rest) >= 6 && strings.Trim(rest, "0123456789") == "" {
			return true
		}
	}
	return false
}

// RemoveSub removes the subdirectory name of the state directory (one of
// the sorts' working directories) with the run files in it.
func (j *Journal) RemoveSub(name string) error {
	return removeTree(j.dir, name)
}

func removeTree(d *fsx.Dir, name string) error {
	subs := ownDirs[name]
	if len(subs) > 0 {
		sub, err := d.Sub(name)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return err
		}
		var errs []error
		for _, s := range subs {
			errs = append(errs, sub.RemoveOwn(s, runFile))
		}
		sub.Close()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return d.RemoveOwn(name, runFile)
}

// Remove deletes the finished job's state: the files and directories hlcp
// made in it, then the directory itself if hlcp made it. Whatever else is
// there stays, and is named in the error. It first records, durably, that
// the state is being removed (with the root's times, which the removal
// changes): a kill in the middle leaves a state that says so, and a rerun
// finishes the removal (see Removing) instead of finding a damaged state.
// state.json goes last but for the marker; what a kill after it leaves,
// the marker alone, reads as no job.
func (j *Journal) Remove(rootTimes [2]unix.Timespec) error {
	if !j.Removing {
		j.Removing, j.RootTimes = true, rootTimes
		if err := j.Save(); err != nil {
			return err
		}
	}
	return removeState(j.dir, j.place, j.madeDir)
}

// Discard removes the state at p whatever its condition, damaged
// included, for --restart: only when it carries hlcp's marker, and only
// the names hlcp makes.
func Discard(p Place) error {
	d, err := openDir(p, false)
	if errors.Is(err, ErrNoJob) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	m, err := readMarker(d)
	if err != nil {
		names, _ := d.Names()
		if fresh(names) {
			// What a crash inside Create left: hlcp's own names only.
			return removeState(d, p, p.InDst)
		}
		return fmt.Errorf("%s is not an hlcp state directory (%v): hlcp deletes nothing in it; remove it yourself if it is no longer needed", msg.Quote(p.Path), err)
	}
	return removeState(d, p, m.MadeDir || p.InDst)
}

func removeState(d *fsx.Dir, p Place, rmdir bool) error {
	names, err := d.Names()
	if err != nil {
		return err
	}
	var errs []error
	var foreign []string
	for _, n := range names {
		switch {
		case n == markerFile, n == stateFile:
			// Last, in this order (see Journal.Remove): without the
			// marker nothing here may be deleted; while the state is
			// there it says what is going on.
		case ownDirs[n] != nil:
			errs = append(errs, removeTree(d, n))
		case ownTrees[n]:
			errs = append(errs, removeAll(d, n))
		case ownFile(n):
			if err := d.Remove(n); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, err)
			}
		default:
			foreign = append(foreign, n)
		}
	}
	if len(foreign) > 0 {
		errs = append(errs, fmt.Errorf("%s holds entries hlcp did not make, left as they are: %s", msg.Quote(d.Path()), strings.Join(quoteAll(foreign), ", ")))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, n := range []string{stateFile, markerFile} {
		if err := d.Remove(n); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	if !rmdir {
		return d.Sync()
	}
	// The directory is removed by its name in its parent, only while
	// that name still holds it (a swap in a DST that someone else can
	// write would at worst leave it, empty, where it was).
	self, err := d.Stat()
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(p.Parent, p.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("remove state directory %s: %w", msg.Quote(p.Path), err)
	}
	if st.Dev != self.Dev || st.Ino != self.Ino {
		return fmt.Errorf("remove state directory %s: the name no longer holds it", msg.Quote(p.Path))
	}
	if err := unix.Unlinkat(p.Parent, p.Name, unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("remove state directory %s: %w", msg.Quote(p.Path), err)
	}
	return nil
}

func quoteAll(names []string) []string {
	out := make([]string, 0, len(names))
	for i, n := range names {
		if i == 10 {
			out = append(out, fmt.Sprintf("and %d more", len(names)-10))
			break
		}
		out = append(out, msg.Quote(n))
	}
	return out
}

// removeAll removes the subdirectory name of d and everything in it, one
// component at a time from fds: a symlink in it is unlinked, never
// followed.
func removeAll(d *fsx.Dir, name string) error {
	sub, err := d.Sub(name)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	names, err := sub.Names()
	if err != nil {
		sub.Close()
		return err
	}
	for _, n := range names {
		st, err := sub.Lstat(n)
		if err != nil {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = removeAll(sub, n)
		} else {
			err = sub.Remove(n)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			sub.Close()
			return err
		}
	}
	sub.Close()
	if err := d.Rmdir(name); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}
