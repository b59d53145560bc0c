package differ

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
)

// task is one comparison for the workers: a pair of directories, or an
// inode pair reached through one of its paths.
type task struct {
	dir      bool
	typ      uint8
	key      []byte
	src, dst Node
	sdir     uint32 // entries: parent dirs; dirs: the dirs' own ids
	ddir     uint32
	checksum bool
	others   int64 // other paths of the same inode pair (reported once)
}

// fail records a difference (an error, a change) of the task's path.
func (t *task) fail(r *run, code, format string, args ...any) {
	r.diff(code, t.key, t.src, t.dst, nil, format, args...)
}

// pool is a running pool of comparison workers.
type pool struct {
	in chan task
	g  errgroup.Group
}

// startWorkers starts the comparison workers; stop closes their queue and
// waits for them.
func (r *run) startWorkers(ctr *progress.Counters) *pool {
	p := &pool{in: make(chan task, 4*r.o.Jobs)}
	for i := 0; i < r.o.Jobs; i++ {
		p.g.Go(func() error {
			w := &worker{r: r, h: r.hasher.Clone(), ctr: ctr}
			for t := range p.in {
				w.do(t)
			}
			return nil
		})
	}
	return p
}

func (p *pool) stop() {
	close(p.in)
	p.g.Wait()
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
	okA := w.load(r.src, t.sdir, keyName(t.key), t.typ, t.src.Dev, t.src.Ino, t.checksum, &a, &t)
	okB := w.load(r.dst, t.ddir, keyName(t.key), t.typ, t.dst.Dev, t.dst.Ino, t.checksum && okA, &b, &t)
	if !okA || !okB {
		return
	}
	for _, d := range CompareMeta(&a, &b, r.o.What) {
		if t.others > 0 {
			d.Detail += fmt.Sprintf("; inode of %d more paths", t.others)
		}
		r.diff(d.Code, t.key, t.src, t.dst, nil, "%s", d.Detail)
	}
}

// load reads what is compared of one side's inode, reached by its path
// (parent dir id and name); it reports and returns false when it cannot.
func (w *worker) load(s *side, dir uint32, name string, typ uint8, dev, ino uint64, sum bool, in *Inode, t *task) bool {
	r := w.r
	pfd, err := s.cache.Acquire(dir)
	if err != nil {
		t.fail(r, CodeError, "%s: open directory: %v", s.name, err)
		return false
	}
	defer s.cache.Release(dir)
	wantX := r.o.What.Xattrs || r.o.What.ACLs
	if typ == fsx.TypeReg && !sum && wantX {
		// Most files have no xattrs: two syscalls (fstatat and
		// listxattrat) then tell all, where opening the file takes four.
		if err := unix.Fstatat(pfd, name, &in.St, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.fail(r, CodeError, "%s: lstat: %v", s.name, err)
			return false
		}
		if in.St.Mode&unix.S_IFMT == unix.S_IFREG {
			if none, ok := fsx.NoXattrsAt(pfd, name); ok && none {
				return w.same(s, in, dev, ino, t)
			}
		}
	}
	if typ == fsx.TypeReg {
		fd, err := fsx.OpenNoAtime(pfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
		if err != nil {
			t.fail(r, CodeError, "%s: open: %v", s.name, err)
			return false
		}
		defer unix.Close(fd)
		if err := unix.Fstat(fd, &in.St); err != nil {
			t.fail(r, CodeError, "%s: stat: %v", s.name, err)
			return false
		}
		if !w.same(s, in, dev, ino, t) {
			return false
		}
		if r.o.What.Xattrs || r.o.What.ACLs {
			if in.Xattrs, err = w.x.ReadFd(fd); err != nil {
				in.NoXattrs = true
				t.fail(r, CodeError, "%s: %v", s.name, err)
			}
		}
		if sum {
			sparse := in.St.Blocks*512 < in.St.Size
			var n int64
			if in.Sum, n, err = w.h.Sum(fd, in.St.Size, sparse); err != nil {
				t.fail(r, CodeError, "%s: read: %v", s.name, err)
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
		t.fail(r, CodeError, "%s: lstat: %v", s.name, err)
		return false
	}
	if !w.same(s, in, dev, ino, t) {
		return false
	}
	if typ == fsx.TypeLnk {
		target, err := fsx.Readlink(pfd, name, w.lb)
		if err != nil {
			t.fail(r, CodeError, "%s: readlink: %v", s.name, err)
			return false
		}
		w.lb = target
		in.Target = append([]byte(nil), target...)
	}
	if wantX {
		if none, ok := fsx.NoXattrsAt(pfd, name); ok && none {
			return true
		}
		var err error
		if in.Xattrs, err = w.x.ReadPath(fsx.ProcPath(pfd, name)); err != nil {
			in.NoXattrs = true
			t.fail(r, CodeError, "%s: %v", s.name, err)
		}
	}
	return true
}

// same checks that a path still names the inode its scan saw.
func (w *worker) same(s *side, in *Inode, dev, ino uint64, t *task) bool {
	if in.St.Dev != dev || in.St.Ino != ino {
		t.fail(w.r, CodeChanged, "%s: replaced while being verified", s.name)
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
			t.fail(r, CodeError, "%s: %v", s.name, err)
			return
		}
		in.St.Mode, in.St.Uid, in.St.Gid, in.St.Mtim, in.St.Atim = d.Mode, d.Uid, d.Gid, d.Mtime, d.Atime
		if (r.o.What.Xattrs || r.o.What.ACLs) && d.Flags&(plan.DirUnreadable|plan.DirGone) == 0 {
			if w.dirHasNoXattrs(s, &d) {
				continue
			}
			fd, err := w.openDir(s, &d)
			if err != nil {
				in.NoXattrs = true
				t.fail(r, CodeError, "%s: open directory: %v", s.name, err)
				continue
			}
			if in.Xattrs, err = w.x.ReadFd(fd); err != nil {
				in.NoXattrs = true
				t.fail(r, CodeError, "%s: %v", s.name, err)
			}
			unix.Close(fd)
		}
	}
	if len(t.key) == 1 && len(r.o.DstSkip) > 0 {
		// The root's times moved with the job's state in it.
		b.St.Mtim, b.St.Atim = a.St.Mtim, a.St.Atim
	}
	for _, d := range CompareMeta(&a, &b, r.o.What) {
		r.diff(d.Code, t.key, t.src, t.dst, nil, "%s", d.Detail)
	}
}

// dirHasNoXattrs tells, where the kernel can without opening it
// (listxattrat), that directory d has no xattrs.
func (w *worker) dirHasNoXattrs(s *side, d *plan.Dir) bool {
	if d.ID == 0 {
		return false
	}
	pfd, err := s.cache.Acquire(d.Parent)
	if err != nil {
		return false
	}
	defer s.cache.Release(d.Parent)
	none, ok := fsx.NoXattrsAt(pfd, string(d.Name))
	return ok && none
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
