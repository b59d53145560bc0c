package differ

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"hlcp/internal/budget"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/scan"
)

// side is one of the two trees.
type side struct {
	name          string
	scanErrs      atomic.Int64 // paths the scan could not read
	root          string
	rootFd        int      // the root as the caller opened it, or 0
	skip          []string // names of the root left out
	fd            int
	paths, dirs   *extsort.Sorter
	pathRuns, dru []extsort.Run
	tmp           *fsx.Dir // its temporary directory
	pairTmp       *fsx.Dir // pa or pb: the pair runs' directory
	st            scan.Stats
	dt            *plan.DirTable
	cache         *fsx.DirCache
}

type emitter struct {
	s   *side
	buf []byte
	rec [][]byte
	end []int
	d   []byte
	rel []byte
}

func (e *emitter) Dir(d *plan.Dir, rel []byte) error {
	e.d = plan.AppendDir(e.d[:0], d)
	if err := e.s.dirs.Add(e.d); err != nil {
		return err
	}
	e.buf = appendPath(e.buf, rel, kindDir, fsx.TypeDir, d.Dev, d.Ino, d.ID)
	e.end = append(e.end, len(e.buf))
	return nil
}

func (e *emitter) Entry(dir uint32, dev, ino uint64, typ uint8, name, dirRel []byte, _ *unix.Stat_t) error {
	e.rel = append(e.rel[:0], dirRel...)
	if len(e.rel) > 0 {
		e.rel = append(e.rel, '/')
	}
	e.rel = append(e.rel, name...)
	e.buf = appendPath(e.buf, e.rel, kindEntry, typ, dev, ino, dir)
	e.end = append(e.end, len(e.buf))
	if len(e.buf) > 256<<10 {
		return e.Flush()
	}
	return nil
}

func (e *emitter) Flush() error {
	if len(e.end) == 0 {
		return nil
	}
	e.rec = e.rec[:0]
	start := 0
	for _, end := range e.end {
		e.rec = append(e.rec, e.buf[start:end])
		start = end
	}
	err := e.s.paths.AddBatch(e.rec)
	e.buf, e.end = e.buf[:0], e.end[:0]
	return err
}

// scan scans both trees at once, each into its sorts of path and
// directory records, then builds each tree's directory table and opens its
// directory cache.
func (r *run) scan() error {
	ctr := r.o.Progress.Phase("scan", "paths", "")
	var scans errgroup.Group
	errs := make([]error, 2)
	for i, s := range []*side{r.src, r.dst} {
		var err error
		if s.tmp, err = r.mkdir(r.tmp, s.name); err != nil {
			return err
		}
		p, err := r.mkdir(s.tmp, "p")
		if err != nil {
			return err
		}
		d, err := r.mkdir(s.tmp, "d")
		if err != nil {
			return err
		}
		s.paths = extsort.New(p, r.mem().VerifyPaths(), false)
		s.dirs = extsort.New(d, r.mem().VerifyDirs(), false)
		scans.Go(func() error {
			st, err := scan.Scan(r.ctx, s.root, scan.Options{
				Jobs: max(1, r.o.Jobs/2), OneFileSystem: r.o.OneFileSystem,
				RootFd: s.rootFd, SkipTop: s.skip,
				NewEmitter: func() scan.Emitter { return &emitter{s: s} },
				Counters:   ctr,
				OnError: func(rel string, err error) {
					s.scanErrs.Add(1)
					r.diff(CodeError, appendKey(nil, []byte(rel)), Node{}, Node{}, nil, "%s: %v", s.name, err)
				},
			})
			s.st = st
			if err != nil {
				errs[i] = fmt.Errorf("scan %s: %w", s.root, err)
				return nil
			}
			if s.pathRuns, _, _, err = s.paths.Finish(); err != nil {
				errs[i] = err
				return nil
			}
			s.dru, _, _, errs[i] = s.dirs.Finish()
			return nil
		})
	}
	scans.Wait()
	r.o.Progress.End()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.res.SrcPaths = r.src.st.Dirs + r.src.st.Entries
	r.res.DstPaths = r.dst.st.Dirs + r.dst.st.Entries
	for _, s := range []*side{r.src, r.dst} {
		dt, _, err := plan.BuildDirTable(s.dru, s.tmp, s.tmp, r.mem().VerifyDirTable())
		if err != nil {
			return fmt.Errorf("%s directories: %w", s.name, err)
		}
		s.dt = dt
		if _, err := dt.LoadNames(r.mem().DirNames()); err != nil {
			return err
		}
		var fd int
		if s.rootFd > 0 {
			fd, err = unix.Openat(s.rootFd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		} else {
			fd, err = unix.Open(s.root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return err
		}
		s.fd = fd
		s.cache = fsx.NewDirCache(fd, dt.Resolve, unix.O_PATH, budget.DirCacheSize(2, r.mem().DirCaches()))
	}
	return nil
}
