// Package verify compares two trees in bounded memory: both are scanned
// (internal/scan), their records sorted by path on disk and merge-joined;
// each matched non-directory yields a (source inode, destination inode)
// pair, and those pairs, sorted one way and then the other, prove the link
// partition (one source inode maps to one destination inode and back) and
// give each inode pair once, so metadata and content are read once per
// inode however many paths it has. Every difference goes through one more
// sort so that the report comes out in path order.
package verify

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"hlcp/internal/budget"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
	"hlcp/internal/scan"
)

// Options of a verification.
type Options struct {
	Src, Dst      string
	Jobs          int
	Memory        int64
	TmpDir        string
	What          What
	Checksum      bool    // hash the content of every inode pair
	Sample        float64 // else hash this percentage of inode pairs
	Hash          string  // "fast" or "sha256"
	OneFileSystem bool
	Progress      *progress.Reporter
}

// Result of a verification.
type Result struct {
	SrcPaths    int64            `json:"src_paths"`
	DstPaths    int64            `json:"dst_paths"`
	Matched     int64            `json:"matched_paths"`
	InodePairs  int64            `json:"inode_pairs"`
	Hashed      int64            `json:"inode_pairs_hashed"`
	BytesHashed int64            `json:"bytes_hashed"`
	Diffs       int64            `json:"differences"`
	ByCode      map[string]int64 `json:"by_code"`
	Errors      int64            `json:"errors"`
}

// Record layouts (big-endian; keys are paths with a NUL terminator, so the
// order depends on the path alone).
const (
	kindDir   = 'd'
	kindEntry = 'e'
	pathTail  = 1 + 1 + 8 + 8 + 4
)

func appendKey(dst, rel []byte) []byte {
	dst = append(dst, rel...)
	return append(dst, 0)
}

func appendPath(dst, rel []byte, kind, typ uint8, dev, ino uint64, dir uint32) []byte {
	dst = appendKey(dst, rel)
	dst = append(dst, kind, typ)
	dst = binary.BigEndian.AppendUint64(dst, dev)
	dst = binary.BigEndian.AppendUint64(dst, ino)
	return binary.BigEndian.AppendUint32(dst, dir)
}

type pathRec struct {
	key       []byte // with the NUL
	kind, typ uint8
	dev, ino  uint64
	dir       uint32 // the directory's own id for kindDir, its parent's for entries
}

func decodePath(rec []byte) (pathRec, error) {
	i := bytes.IndexByte(rec, 0)
	if i < 0 || len(rec)-i-1 != pathTail {
		return pathRec{}, fmt.Errorf("verify: bad path record")
	}
	t := rec[i+1:]
	return pathRec{key: rec[:i+1], kind: t[0], typ: t[1], dev: binary.BigEndian.Uint64(t[2:]), ino: binary.BigEndian.Uint64(t[10:]), dir: binary.BigEndian.Uint32(t[18:])}, nil
}

func keyPath(key []byte) string { return string(key[:len(key)-1]) }

func keyName(key []byte) string {
	p := key[:len(key)-1]
	if i := bytes.LastIndexByte(p, '/'); i >= 0 {
		return string(p[i+1:])
	}
	return string(p)
}

// side is one of the two trees.
type side struct {
	name          string
	root          string
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

type run struct {
	o      Options
	tmp    *fsx.Dir
	dirs   []*fsx.Dir // temporary directories to close
	src    *side
	dst    *side
	diffs  *extsort.Sorter
	res    Result
	byCode sync.Map // code -> *atomic.Int64
	hasher *Hasher
	errs   atomic.Int64
	npairs int64  // matched non-directory paths
	sample uint64 // threshold out of 1<<32, or 0
	seed   uint64
}

// Run verifies o.Src against o.Dst and calls emit for every difference,
// in path order. It never writes to either tree.
func Run(o Options, emit func(Diff) error) (Result, error) {
	if o.Jobs < 1 {
		o.Jobs = 4
	}
	o.Memory = int64(budget.Budget(o.Memory).Or())
	if o.Progress == nil {
		o.Progress = progress.New(io.Discard, progress.Quiet, 0)
	}
	h, err := NewHasher(o.Hash)
	if err != nil {
		return Result{}, err
	}
	tmp, err := os.MkdirTemp(o.TmpDir, "hlcp-verify-")
	if err != nil {
		return Result{}, fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	r := &run{o: o, hasher: h, seed: rand.Uint64()}
	defer func() {
		for _, d := range r.dirs {
			d.Close()
		}
	}()
	if r.tmp, err = fsx.OpenDir(tmp); err != nil {
		return Result{}, fmt.Errorf("temporary directory: %w", err)
	}
	r.dirs = append(r.dirs, r.tmp)
	switch {
	case o.Sample >= 100:
		r.o.Checksum = true
	case o.Sample > 0:
		r.sample = uint64(o.Sample / 100 * (1 << 32))
	}
	diffs, err := r.mkdir(r.tmp, "diffs")
	if err != nil {
		return Result{}, err
	}
	r.diffs = extsort.New(diffs, r.mem().VerifyDiffs(), false)
	r.src = &side{name: "src", root: o.Src}
	r.dst = &side{name: "dst", root: o.Dst}
	defer r.close()
	if err := r.scan(); err != nil {
		return r.res, err
	}
	if err := r.join(); err != nil {
		return r.res, err
	}
	if err := r.pairs(); err != nil {
		return r.res, err
	}
	if err := r.reverse(); err != nil {
		return r.res, err
	}
	return r.report(emit)
}

// mkdir makes the temporary directory name in parent.
func (r *run) mkdir(parent *fsx.Dir, name string) (*fsx.Dir, error) {
	d, err := parent.Mkdir(name)
	if err != nil {
		return nil, err
	}
	r.dirs = append(r.dirs, d)
	return d, nil
}

func (r *run) mem() budget.Budget { return budget.Budget(r.o.Memory) }

func (r *run) close() {
	for _, s := range []*side{r.src, r.dst} {
		if s.cache != nil {
			s.cache.Close()
		}
		if s.dt != nil {
			s.dt.Close()
		}
		if s.fd > 0 {
			unix.Close(s.fd)
		}
	}
}

func (r *run) diff(code string, key []byte, format string, args ...any) {
	rec := appendKey(nil, key[:len(key)-1])
	rec = append(rec, code...)
	rec = append(rec, 0)
	rec = append(rec, fmt.Sprintf(format, args...)...)
	if len(rec) > extsort.MaxRecord {
		rec = rec[:extsort.MaxRecord]
	}
	r.diffs.Add(rec)
	v, _ := r.byCode.LoadOrStore(code, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	if code == CodeError || code == CodeChanged {
		r.errs.Add(1) // not a difference: the path could not be checked
	}
}

func (r *run) scan() error {
	ctr := r.o.Progress.Phase("scan", "paths", "")
	var wg sync.WaitGroup
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := scan.Scan(s.root, scan.Options{
				Jobs: max(1, r.o.Jobs/2), OneFileSystem: r.o.OneFileSystem,
				NewEmitter: func() scan.Emitter { return &emitter{s: s} },
				Counters:   ctr,
				OnError: func(rel string, err error) {
					r.diff(CodeError, appendKey(nil, []byte(rel)), "%s: %v", s.name, err)
				},
			})
			s.st = st
			if err != nil {
				errs[i] = fmt.Errorf("scan %s: %w", s.root, err)
				return
			}
			if s.pathRuns, _, _, err = s.paths.Finish(); err != nil {
				errs[i] = err
				return
			}
			s.dru, _, _, errs[i] = s.dirs.Finish()
		}()
	}
	wg.Wait()
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
		fd, err := unix.Open(s.root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s.fd = fd
		s.cache = fsx.NewDirCache(fd, dt.Resolve, unix.O_PATH, budget.DirCacheSize(2, r.mem().DirCaches()))
	}
	return nil
}

// task is one comparison for the workers.
type task struct {
	dir      bool
	typ      uint8
	key      []byte
	sdir     uint32 // entries: parent dirs; dirs: the dirs' own ids
	ddir     uint32
	sdev     uint64
	sino     uint64
	ddev     uint64
	dino     uint64
	checksum bool
	others   int64 // other paths of the same inode pair (reported once)
}

func (r *run) workers(tasks <-chan task, wg *sync.WaitGroup, ctr *progress.Counters) {
	for i := 0; i < r.o.Jobs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{r: r, h: r.hasher.Clone(), ctr: ctr}
			for t := range tasks {
				w.do(t)
			}
		}()
	}
}

// join merge-joins the two path-sorted streams.
func (r *run) join() error {
	ctr := r.o.Progress.Phase("compare", "paths", "")
	ctr.Total.Store(r.res.SrcPaths)
	mem := r.mem().VerifyJoin()
	var err error
	if r.src.pairTmp, err = r.mkdir(r.tmp, "pa"); err != nil {
		return err
	}
	if r.dst.pairTmp, err = r.mkdir(r.tmp, "pb"); err != nil {
		return err
	}
	sr, sdone := extsort.MergeStream(r.src.pathRuns, r.src.tmp, mem, nil)
	dr, ddone := extsort.MergeStream(r.dst.pathRuns, r.dst.tmp, mem, nil)
	pa := extsort.New(r.src.pairTmp, r.mem().VerifyPaths(), false)
	pb := extsort.New(r.dst.pairTmp, r.mem().VerifyPaths(), false)

	tasks := make(chan task, 4*r.o.Jobs)
	var wg sync.WaitGroup
	r.workers(tasks, &wg, nil)

	next := func(rd *extsort.Reader) (pathRec, bool, error) {
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
	a, aok, err := next(sr)
	var b pathRec
	var bok bool
	if err == nil {
		b, bok, err = next(dr)
	}
	var rec []byte
	for err == nil && (aok || bok) {
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
			r.diff(CodeMissing, a.key, "")
			ctr.Done.Add(1)
			a, aok, err = next(sr)
			continue
		case c > 0:
			r.diff(CodeExtra, b.key, "")
			b, bok, err = next(dr)
			continue
		}
		ctr.Done.Add(1)
		r.res.Matched++
		switch {
		case a.kind != b.kind || a.typ != b.typ:
			r.diff(CodeType, a.key, "%s -> %s", fsx.TypeName(a.typ), fsx.TypeName(b.typ))
		case a.kind == kindDir:
			tasks <- task{dir: true, key: append([]byte(nil), a.key...), sdir: a.dir, ddir: b.dir}
		default:
			r.npairs++
			rec = binary.BigEndian.AppendUint64(rec[:0], a.dev)
			rec = binary.BigEndian.AppendUint64(rec, a.ino)
			rec = binary.BigEndian.AppendUint64(rec, b.dev)
			rec = binary.BigEndian.AppendUint64(rec, b.ino)
			rec = append(rec, a.key...)
			rec = binary.BigEndian.AppendUint32(rec, a.dir)
			rec = binary.BigEndian.AppendUint32(rec, b.dir)
			rec = append(rec, a.typ)
			if err = pa.Add(rec); err != nil {
				break
			}
			rec = binary.BigEndian.AppendUint64(rec[:0], b.dev)
			rec = binary.BigEndian.AppendUint64(rec, b.ino)
			rec = binary.BigEndian.AppendUint64(rec, a.dev)
			rec = binary.BigEndian.AppendUint64(rec, a.ino)
			rec = append(rec, a.key...)
			err = pb.Add(rec)
		}
		if err != nil {
			break
		}
		a, aok, err = next(sr)
		if err == nil {
			b, bok, err = next(dr)
		}
	}
	close(tasks)
	wg.Wait()
	e1, e2 := sdone(), ddone()
	if err == nil {
		err = errors.Join(e1, e2)
	}
	if err != nil {
		return fmt.Errorf("compare paths: %w", err)
	}
	var err1, err2 error
	r.src.pathRuns, _, _, err1 = pa.Finish() // reuse: now the pair runs
	r.dst.pathRuns, _, _, err2 = pb.Finish()
	r.o.Progress.End()
	return errors.Join(err1, err2)
}

// A pair record: source dev, ino, destination dev, ino, then the path key
// (so that within a pair, paths come in path order), then the two parent
// directory ids and the type.
const pairTail = 4 + 4 + 1

func pairKey(rec []byte) []byte { return rec[32 : len(rec)-pairTail] }

// pairs walks (src inode, dst inode) pairs sorted by source inode: a source
// inode with two destination inodes was split; each distinct pair is
// compared once.
func (r *run) pairs() error {
	ctr := r.o.Progress.Phase("inodes", "paths", "")
	ctr.Total.Store(r.npairs)
	rd, done := extsort.MergeStream(r.src.pathRuns, r.src.pairTmp, r.mem().VerifyMerge(), nil)
	tasks := make(chan task, 4*r.o.Jobs)
	var wg sync.WaitGroup
	r.workers(tasks, &wg, ctr)
	var first, cur []byte // first record of the source inode group / of the current pair
	var pending *task     // the current pair, sent when its last path is seen
	send := func() {
		if pending != nil {
			tasks <- *pending
			pending = nil
		}
	}
	err := eachRecord(rd, 32+1+pairTail, "pair", func(rec []byte) error {
		ctr.Done.Add(1)
		key := pairKey(rec)
		if first == nil || !bytes.Equal(first[:16], rec[:16]) {
			first = append(first[:0], rec...)
			cur = nil
		} else if !bytes.Equal(first[16:32], rec[16:32]) {
			r.diff(CodeSplit, key, "shares an inode with %s in SRC but not in DST", fsx.Quote(keyPath(pairKey(first))))
		}
		if cur != nil && bytes.Equal(cur[:32], rec[:32]) {
			pending.others++ // same pair: compared once
			return nil
		}
		send()
		cur = append(cur[:0], rec...)
		r.res.InodePairs++
		be := binary.BigEndian
		tail := rec[len(rec)-pairTail:]
		t := task{typ: tail[8], key: append([]byte(nil), key...), sdev: be.Uint64(rec), sino: be.Uint64(rec[8:]), ddev: be.Uint64(rec[16:]), dino: be.Uint64(rec[24:]), sdir: be.Uint32(tail), ddir: be.Uint32(tail[4:])}
		t.checksum = t.typ == fsx.TypeReg && (r.o.Checksum || r.sample > 0 && r.sampled(t.sdev, t.sino))
		pending = &t
		return nil
	})
	if err == nil {
		send()
	}
	close(tasks)
	wg.Wait()
	if e := done(); err == nil {
		err = e
	}
	r.o.Progress.End()
	return err
}

// eachRecord calls fn with every record of rd (valid during the call) until
// the end, an error, or a record shorter than min (a damaged sort file).
func eachRecord(rd *extsort.Reader, min int, what string, fn func(rec []byte) error) error {
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(rec) < min {
			return fmt.Errorf("verify: bad %s record", what)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

func (r *run) sampled(dev, ino uint64) bool {
	x := (dev*0x9E3779B97F4A7C15 ^ ino*0xC2B2AE3D27D4EB4F ^ r.seed) * 0x165667B19E3779F9
	return x>>32 < r.sample
}

// reverse walks the pairs sorted by destination inode: a destination inode
// reached from two source inodes joined what the source kept apart.
func (r *run) reverse() error {
	rd, done := extsort.MergeStream(r.dst.pathRuns, r.dst.pairTmp, r.mem().VerifyMerge(), nil)
	var first []byte
	err := eachRecord(rd, 33, "reverse pair", func(rec []byte) error {
		if first == nil || !bytes.Equal(first[:16], rec[:16]) {
			first = append(first[:0], rec...)
		} else if !bytes.Equal(first[16:32], rec[16:32]) {
			r.diff(CodeJoined, rec[32:], "shares an inode with %s in DST but not in SRC", fsx.Quote(keyPath(first[32:])))
		}
		return nil
	})
	if e := done(); err == nil {
		err = e
	}
	return err
}

func (r *run) report(emit func(Diff) error) (Result, error) {
	runs, n, _, err := r.diffs.Finish()
	if err != nil {
		return r.res, err
	}
	r.res.Diffs = n
	r.res.Errors = r.errs.Load()
	r.res.ByCode = map[string]int64{}
	r.byCode.Range(func(k, v any) bool {
		r.res.ByCode[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	if n == 0 {
		return r.res, nil
	}
	rd, done := extsort.MergeStream(runs, nil, r.mem().VerifyMerge(), nil)
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			done()
			return r.res, err
		}
		i := bytes.IndexByte(rec, 0)
		j := bytes.IndexByte(rec[i+1:], 0)
		if i < 0 || j < 0 {
			done()
			return r.res, errors.New("verify: bad difference record")
		}
		d := Diff{Path: string(rec[:i]), Code: string(rec[i+1 : i+1+j]), Detail: string(rec[i+2+j:])}
		if err := emit(d); err != nil {
			done()
			return r.res, err
		}
	}
	return r.res, done()
}

type worker struct {
	r   *run
	h   *Hasher
	x   fsx.Xattrs
	lb  []byte
	ctr *progress.Counters
}

func (w *worker) do(t task) {
	if t.dir {
		w.dir(t)
		return
	}
	r := w.r
	var a, b Inode
	okA := w.load(r.src, t.sdir, keyName(t.key), t.typ, t.sdev, t.sino, t.checksum, &a, t.key)
	okB := w.load(r.dst, t.ddir, keyName(t.key), t.typ, t.ddev, t.dino, t.checksum && okA, &b, t.key)
	if !okA || !okB {
		return
	}
	for _, d := range CompareMeta(&a, &b, r.o.What) {
		if t.others > 0 {
			d.Detail += fmt.Sprintf("; inode of %d more paths", t.others)
		}
		r.diff(d.Code, t.key, "%s", d.Detail)
	}
}

// load reads what is compared of one side's inode, reached by its path
// (parent dir id and name); it reports and returns false when it cannot.
func (w *worker) load(s *side, dir uint32, name string, typ uint8, dev, ino uint64, sum bool, in *Inode, key []byte) bool {
	r := w.r
	pfd, err := s.cache.Acquire(dir)
	if err != nil {
		r.diff(CodeError, key, "%s: open directory: %v", s.name, err)
		return false
	}
	defer s.cache.Release(dir)
	if typ == fsx.TypeReg {
		fd, err := fsx.OpenNoAtime(pfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
		if err != nil {
			r.diff(CodeError, key, "%s: open: %v", s.name, err)
			return false
		}
		defer unix.Close(fd)
		if err := unix.Fstat(fd, &in.St); err != nil {
			r.diff(CodeError, key, "%s: stat: %v", s.name, err)
			return false
		}
		if !w.same(s, in, dev, ino, key) {
			return false
		}
		if r.o.What.Xattrs || r.o.What.ACLs {
			if in.Xattrs, err = w.x.ReadFd(fd); err != nil {
				in.NoXattrs = true
				r.diff(CodeError, key, "%s: %v", s.name, err)
			}
		}
		if sum {
			sparse := in.St.Blocks*512 < in.St.Size
			var n int64
			if in.Sum, n, err = w.h.Sum(fd, in.St.Size, sparse); err != nil {
				r.diff(CodeError, key, "%s: read: %v", s.name, err)
				return false
			}
			if w.ctr != nil {
				w.ctr.Bytes.Add(n)
			}
			atomic.AddInt64(&r.res.BytesHashed, n)
			if s == r.src {
				atomic.AddInt64(&r.res.Hashed, 1)
			}
		}
		return true
	}
	if err := unix.Fstatat(pfd, name, &in.St, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		r.diff(CodeError, key, "%s: lstat: %v", s.name, err)
		return false
	}
	if !w.same(s, in, dev, ino, key) {
		return false
	}
	if typ == fsx.TypeLnk {
		t, err := fsx.Readlink(pfd, name, w.lb)
		if err != nil {
			r.diff(CodeError, key, "%s: readlink: %v", s.name, err)
			return false
		}
		w.lb = t
		in.Target = append([]byte(nil), t...)
	}
	if r.o.What.Xattrs || r.o.What.ACLs {
		var err error
		if in.Xattrs, err = w.x.ReadPath(fsx.ProcPath(pfd, name)); err != nil {
			in.NoXattrs = true
			r.diff(CodeError, key, "%s: %v", s.name, err)
		}
	}
	return true
}

// same checks that a path still names the inode its scan saw.
func (w *worker) same(s *side, in *Inode, dev, ino uint64, key []byte) bool {
	if in.St.Dev != dev || in.St.Ino != ino {
		w.r.diff(CodeChanged, key, "%s: replaced while being verified", s.name)
		return false
	}
	return true
}

// dir compares two directories: metadata from the scan's directory tables,
// xattrs read through their fds.
func (w *worker) dir(t task) {
	r := w.r
	var a, b Inode
	for i, s := range []*side{r.src, r.dst} {
		id := t.sdir
		in := &a
		if i == 1 {
			id, in = t.ddir, &b
		}
		var d plan.Dir
		if err := s.dt.Get(id, &d); err != nil {
			r.diff(CodeError, t.key, "%s: %v", s.name, err)
			return
		}
		in.St.Mode, in.St.Uid, in.St.Gid, in.St.Mtim, in.St.Atim = d.Mode, d.Uid, d.Gid, d.Mtime, d.Atime
		if (r.o.What.Xattrs || r.o.What.ACLs) && d.Flags&(plan.DirUnreadable|plan.DirGone) == 0 {
			fd, err := w.openDir(s, &d)
			if err != nil {
				in.NoXattrs = true
				r.diff(CodeError, t.key, "%s: open directory: %v", s.name, err)
				continue
			}
			if in.Xattrs, err = w.x.ReadFd(fd); err != nil {
				in.NoXattrs = true
				r.diff(CodeError, t.key, "%s: %v", s.name, err)
			}
			unix.Close(fd)
		}
	}
	for _, d := range CompareMeta(&a, &b, r.o.What) {
		r.diff(d.Code, t.key, "%s", d.Detail)
	}
}

func (w *worker) openDir(s *side, d *plan.Dir) (int, error) {
	if d.ID == 0 {
		return fsx.OpenNoAtime(s.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	}
	pfd, err := s.cache.Acquire(d.Parent)
	if err != nil {
		return -1, err
	}
	defer s.cache.Release(d.Parent)
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	return fsx.OpenNoAtime(pfd, string(d.Name), flags)
}
