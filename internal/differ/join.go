package differ

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/progress"
)

// join merge-joins the two path-sorted streams. A path only in DST is an
// Extra difference at once; a directory only in SRC is Missing at once. A
// source path of any other type goes to the pair sort by source inode,
// with DST's inode when DST has the path (and to the reverse sort by
// destination inode), or absent when it does not: the pairs walk then
// knows, for a missing path, where its source inode already is in DST.
// Matched directories and type differences are settled here.
func (r *run) join() error {
	ctr := r.o.Progress.Phase("compare", "paths", "")
	ctr.Total.Store(r.res.SrcPaths)
	var err error
	if r.src.pairTmp, err = r.mkdir(r.tmp, "pa"); err != nil {
		return err
	}
	if r.dst.pairTmp, err = r.mkdir(r.tmp, "pb"); err != nil {
		return err
	}
	j := &joiner{r: r, ctr: ctr,
		pa: extsort.New(r.src.pairTmp, r.mem().VerifyPaths(), false),
		pb: extsort.New(r.dst.pairTmp, r.mem().VerifyPaths(), false)}
	sr, sdone := extsort.MergeStream(r.src.pathRuns, r.src.tmp, r.mem().VerifyJoin(), nil)
	dr, ddone := extsort.MergeStream(r.dst.pathRuns, r.dst.tmp, r.mem().VerifyJoin(), nil)
	tasks := r.startWorkers(nil)
	j.tasks = tasks.in
	err = j.walk(sr, dr)
	tasks.stop()
	if e := errors.Join(sdone(), ddone()); err == nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("compare paths: %w", err)
	}
	var err1, err2 error
	r.src.pathRuns, _, _, err1 = j.pa.Finish() // reuse: now the pair runs
	r.dst.pathRuns, _, _, err2 = j.pb.Finish()
	r.o.Progress.End()
	return errors.Join(err1, err2)
}

// joiner is the state of a join.
type joiner struct {
	r      *run
	ctr    *progress.Counters
	pa, pb *extsort.Sorter
	tasks  chan<- task
	rec    []byte
}

func next(rd *extsort.Reader) (pathRec, bool, error) {
	rec, err := rd.Next()
	if err == io.EOF {
		return pathRec{}, false, nil
	}
	if err != nil {
		return pathRec{}, false, err
	}
	p, err := decodePath(rec)
	return p, true, err
}

// walk steps through both streams in path order.
func (j *joiner) walk(sr, dr *extsort.Reader) error {
	r := j.r
	a, aok, err := next(sr)
	if err != nil {
		return err
	}
	b, bok, err := next(dr)
	for n := 0; err == nil && (aok || bok); n++ {
		if n%4096 == 0 && r.ctx.Err() != nil {
			return context.Cause(r.ctx)
		}
		c := 0
		switch {
		case !bok:
			c = -1
		case !aok:
			c = 1
		default:
			c = bytes.Compare(a.key, b.key)
		}
		switch {
		case c < 0:
			j.ctr.Done.Add(1)
			if err = j.srcOnly(&a); err == nil {
				a, aok, err = next(sr)
			}
		case c > 0:
			r.diff(CodeExtra, b.key, Node{}, b.node(), nil, "")
			b, bok, err = next(dr)
		default:
			j.ctr.Done.Add(1)
			r.res.Matched++
			if err = j.match(&a, &b); err == nil {
				if a, aok, err = next(sr); err == nil {
					b, bok, err = next(dr)
				}
			}
		}
	}
	return err
}

// srcOnly handles a path DST lacks.
func (j *joiner) srcOnly(a *pathRec) error {
	if a.kind == kindDir {
		j.r.diff(CodeMissing, a.key, a.node(), Node{}, nil, "")
		return nil
	}
	j.r.npairs++
	j.rec = appendPair(j.rec[:0], a.node(), Node{Dev: absent, Ino: absent}, a.key, a.dir, 0, a.typ)
	return j.pa.Add(j.rec)
}

// match handles a path both trees have.
func (j *joiner) match(a, b *pathRec) error {
	r := j.r
	switch {
	case a.kind != b.kind || a.typ != b.typ:
		r.diff(CodeType, a.key, a.node(), b.node(), nil, "%s -> %s", fsx.TypeName(a.typ), fsx.TypeName(b.typ))
	case a.kind == kindDir:
		j.tasks <- task{dir: true, key: append([]byte(nil), a.key...), sdir: a.dir, ddir: b.dir, src: a.node(), dst: b.node()}
	default:
		r.npairs++
		j.rec = appendPair(j.rec[:0], a.node(), b.node(), a.key, a.dir, b.dir, a.typ)
		if err := j.pa.Add(j.rec); err != nil {
			return err
		}
		j.rec = appendPair(j.rec[:0], b.node(), a.node(), a.key, 0, 0, a.typ)
		return j.pb.Add(j.rec[:len(j.rec)-pairTail])
	}
	return nil
}
