// Package mirror owns `hlcp sync`'s repair of DST into an exact mirror of
// SRC, in time set by what changed. It is the differ's second consumer: the
// differ walks both trees and hands over every difference, typed, and
// every source path with the destination inode at the same path; the
// mirror decides and acts, in passes over sorted files:
//
//  1. decide (decide.go): per source inode, the DST inode to keep (one its
//     paths already reach whose content is a copy of it, not serving
//     another source inode), or none;
//  2. match (decide.go): a source inode with none may have its only match
//     at a path only DST has (a rename): same size, mtime and bytes;
//  3. make directories (apply.go), then per source inode (apply.go): link
//     the paths to the kept inode, or copy the source once (through the
//     copier's methods) and link the rest; replace a path through a
//     temporary name and a rename, never by removing it first; fix the
//     kept inode's metadata in place;
//  4. delete what only DST has (delete.go), deepest first;
//  5. give every directory whose content or metadata changed the source's
//     metadata and times, deepest first (apply.go).
//
// Nothing here needs a record of an earlier run: a run killed at any
// moment leaves DST with each path in its old or its new state (and maybe
// temporary names, which the next run sees as paths only DST has), and a
// rerun converges. Memory stays within the budget: what grows with the
// tree is in the job's state directory.
package mirror

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"hlcp/internal/budget"
	"hlcp/internal/copier"
	"hlcp/internal/differ"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/msg"
	"hlcp/internal/progress"
)

// Options of a mirror.
type Options struct {
	Src, Dst      string
	SrcFd, DstFd  int      // the roots, open (owned by the caller)
	Work          *fsx.Dir // the job's state directory, for the sort files
	Skip          string   // the name of the state directory in DST's root ("" when it is elsewhere)
	Jobs          int
	Memory        int64
	Checksum      bool // compare content, not size and mtime
	OneFileSystem bool
	Owner         bool // restore owners (root)
	DryRun        bool // print the actions, change nothing
	// MaxDelete is the most paths a run may delete; -1: half of DST's.
	MaxDelete int64
	// MaxDeletePct, when > 0, is MaxDelete as a percentage of DST's paths.
	MaxDeletePct float64
	Progress     *progress.Reporter
	OnError      func(rel string, err error)
	OnWarn       func(key, msg string)
	// Action, with DryRun, gets each action in path order: its code
	// (copy, link, relink, meta, delete, mkdir) and the path.
	Action func(code, path, detail string)
}

// Stats of a mirror run.
type Stats struct {
	Compared  differ.Result `json:"compared"`
	Kept      int64         `json:"paths_kept"`
	Copied    int64         `json:"inodes_copied"`
	Renamed   int64         `json:"inodes_reused"` // data DST had in an inode no source keeps (renames, rotations)
	Linked    int64         `json:"links_made"`
	Relinked  int64         `json:"paths_relinked"`
	Deleted   int64         `json:"paths_deleted"`
	MetaFixed int64         `json:"metadata_fixes"`
	DirsMade  int64         `json:"dirs_made"`
	DirsFixed int64         `json:"dirs_fixed"` // directories whose metadata differed
	Bytes     int64         `json:"bytes"`
	Errors    int64         `json:"errors"`
}

// Changes is the number of changes made (or, with DryRun, to make).
func (s *Stats) Changes() int64 {
	return s.Copied + s.Renamed + s.Linked + s.Relinked + s.Deleted + s.MetaFixed + s.DirsMade + s.DirsFixed
}

// ErrTooManyDeletes is a run refused, before it changed anything, because
// it would delete more paths than allowed.
var ErrTooManyDeletes = errors.New("too many deletions")

// Mirror is one run.
type Mirror struct {
	ctx     context.Context
	o       Options
	st      Stats
	errs    atomic.Int64
	maker   *copier.Maker
	srcs    *dirs // source directories by path
	dsts    *dirs // destination directories by path
	seq     atomic.Int64
	tmpTag  string          // random, per run: no temporary name is one SRC has, or a killed run left
	touch   *extsort.Sorter // destination directories whose entries changed
	trashed *spool          // names set aside, deleted at the end
	files   []*spool
	sorts   []*fsx.Dir
	runs    map[*extsort.Sorter][]extsort.Run // sorts finished, for more merges
	waits   []func() error
	runDir  *fsx.Dir
}

// Run makes DST a mirror of SRC (or, with DryRun, says how).
func Run(ctx context.Context, o Options) (Stats, error) {
	if o.OnError == nil {
		o.OnError = func(string, error) {}
	}
	if o.Action == nil {
		o.Action = func(string, string, string) {}
	}
	var tag [8]byte
	rand.Read(tag[:]) // never fails (Go 1.24)
	m := &Mirror{ctx: ctx, o: o, tmpTag: hex.EncodeToString(tag[:])}
	defer m.close()
	if err := m.start(); err != nil {
		return m.st, err
	}
	c, err := m.compare()
	if err != nil {
		return m.st, err
	}
	if err := m.checkDeletes(c); err != nil {
		return m.st, err
	}
	for _, pass := range []func(*collector) error{m.resolveShared, m.decide, m.matchRenames, m.makeDirs, m.apply, m.deleteExtras, m.finishDirs} {
		if err := pass(c); err != nil {
			return m.st, err
		}
		if ctx.Err() != nil {
			return m.st, context.Cause(ctx)
		}
	}
	m.st.Errors = m.errs.Load()
	return m.st, nil
}

func (m *Mirror) mem() budget.Budget { return budget.Budget(m.o.Memory) }

// start opens what the passes share: the work directory, the copier's
// Maker, the directory caches of both trees.
func (m *Mirror) start() error {
	removeWork(m.o.Work) // what a killed run left
	d, err := m.o.Work.Mkdir("mirror")
	if err != nil {
		return err
	}
	m.runDir = d
	if !m.o.DryRun {
		m.maker, err = copier.NewMaker(m.ctx, m.o.SrcFd, m.o.DstFd, copier.Options{Owner: m.o.Owner, Retries: 3, OnError: m.o.OnError, OnWarn: m.o.OnWarn})
		if err != nil {
			return err
		}
	}
	// The passes go in source-inode order (apply) or path order: the
	// caches hold what the budget and the open-file limit allow, most of
	// it for DST, where the links are made.
	fsx.RaiseFileLimit(m.mem().FileLimitFor(1 << 20))
	n := budget.DirCacheSize(2, m.mem().DirCaches())
	m.srcs = newDirs(m.o.SrcFd, max(n/4, 64))
	m.dsts = newDirs(m.o.DstFd, n)
	m.runs = make(map[*extsort.Sorter][]extsort.Run)
	if m.trashed, err = m.newSpool("trashed"); err != nil {
		return err
	}
	m.touch, _, err = m.newSorter("touched", m.mem().VerifyDiffs())
	return err
}

func (m *Mirror) close() {
	for _, w := range m.waits {
		w()
	}
	for _, s := range m.files {
		s.close()
	}
	for _, d := range m.sorts {
		d.Close()
	}
	if m.maker != nil {
		m.maker.Close()
	}
	if m.srcs != nil {
		m.srcs.close()
		m.dsts.close()
	}
	if m.runDir != nil {
		m.runDir.Close()
		removeWork(m.o.Work)
	}
}

// removeWork removes the mirror's working directory in work, with all
// that is in it (the job's state directory: hlcp's own).
func removeWork(work *fsx.Dir) {
	if sub, err := work.Sub("mirror"); err == nil {
		removeAllIn(sub)
		sub.Close()
		work.Rmdir("mirror")
	}
}

// removeAllIn empties directory d, never following a symlink.
func removeAllIn(d *fsx.Dir) {
	names, _ := d.Names()
	for _, n := range names {
		if st, err := d.Lstat(n); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if sub, err := d.Sub(n); err == nil {
				removeAllIn(sub)
				sub.Close()
			}
			d.Rmdir(n)
			continue
		}
		d.Remove(n)
	}
}

// newSpool makes one of the run's spools.
func (m *Mirror) newSpool(name string) (*spool, error) {
	s, err := newSpool(m.runDir, name)
	if err == nil {
		m.files = append(m.files, s)
	}
	return s, err
}

// newSorter makes a sort in its own directory of the run's.
func (m *Mirror) newSorter(name string, mem int) (*extsort.Sorter, *fsx.Dir, error) {
	d, err := m.runDir.Mkdir("sort-" + name)
	if err != nil {
		return nil, nil, err
	}
	m.sorts = append(m.sorts, d)
	return extsort.New(d, mem, false), d, nil
}

// compare runs the differ with the collector as its consumer.
func (m *Mirror) compare() (*collector, error) {
	c := &collector{m: m}
	var err error
	for _, x := range []struct {
		s    **spool
		name string
	}{{&c.groups, "groups"}, {&c.extras, "extras"}, {&c.mkdirs, "mkdirs"}, {&c.dirfix, "dirfix"}} {
		if *x.s, err = m.newSpool(x.name); err != nil {
			return nil, err
		}
	}
	if c.flags, _, err = m.newSorter("flags", m.mem().VerifyDiffs()); err != nil {
		return nil, err
	}
	if c.contested, _, err = m.newSorter("contested", m.mem().VerifyDiffs()); err != nil {
		return nil, err
	}
	tmp, err := m.runDir.Mkdir("sort-differ")
	if err != nil {
		return nil, err
	}
	m.sorts = append(m.sorts, tmp)
	var skip []string
	if m.o.Skip != "" {
		skip = []string{m.o.Skip}
	}
	// hlcp copy gives every non-directory the source's atime: so does a
	// mirror, but for symlinks (readlink moves their atime, ours too) and
	// directories (listing one moves it).
	what := differ.All
	what.Atime, what.NoSymlinkAtime = true, true
	res, err := differ.Run(m.ctx, differ.Options{
		Src: m.o.Src, Dst: m.o.Dst, SrcFd: m.o.SrcFd, DstFd: m.o.DstFd, DstSkip: skip,
		Jobs: m.o.Jobs, Memory: m.o.Memory, Tmp: tmp, What: what, Checksum: m.o.Checksum,
		OneFileSystem: m.o.OneFileSystem, Progress: m.o.Progress, Pairs: c.pair, Shared: c.shared,
	}, c)
	m.st.Compared = res
	if err != nil {
		return nil, err
	}
	for _, s := range []*spool{c.groups, c.extras, c.mkdirs, c.dirfix} {
		if err := s.finish(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// checkDeletes refuses a run that would delete more of DST than allowed
// (an empty or unmounted SRC must not wipe the mirror), before anything
// changes.
func (m *Mirror) checkDeletes(c *collector) error {
	limit := m.o.MaxDelete
	dstPaths := m.st.Compared.DstPaths
	switch {
	case m.o.MaxDeletePct > 0:
		limit = int64(m.o.MaxDeletePct * float64(dstPaths) / 100) // (29% of 100 is 29, not 28.999...)
	case limit < 0:
		limit = dstPaths / 2
	}
	if c.nExtras > limit {
		return fmt.Errorf("%w: this sync would delete %s of DST's %s paths, more than the %s allowed (an empty or unmounted SRC?); check SRC, and pass --max-delete N or --max-delete P%% to allow it",
			ErrTooManyDeletes, progress.Count(c.nExtras), progress.Count(dstPaths), progress.Count(limit))
	}
	return nil
}

// fail reports a path that could not be made a mirror of its source.
func (m *Mirror) fail(rel, why string) {
	m.errs.Add(1)
	m.o.OnError(rel, errors.New(why))
}

func (m *Mirror) failErr(rel string, err error) {
	m.errs.Add(1)
	m.o.OnError(rel, err)
}

// tmpName is a new temporary name for the directory of a destination
// path: a killed run leaves it, and the next one deletes it as a path only
// DST has.
func (m *Mirror) tmpName() string {
	return fmt.Sprintf(".hlcp-sync-%s-%d", m.tmpTag, m.seq.Add(1))
}

func quote(p []byte) string { return msg.Quote(string(p)) }
