// Package scan walks a source tree with directory fds and getdents, several
// directories in parallel. Directories are fstat'ed (their metadata is
// needed, and a changed st_dev marks a mount point); every other entry is
// described from getdents alone (name, d_type, d_ino) without an lstat per
// path. Where d_type is DT_UNKNOWN, or the filesystem's d_ino cannot be
// trusted (overlayfs, FUSE, or a "." whose d_ino differs from fstat), entries
// are lstat'ed instead.
//
// Memory: each worker holds a getdents buffer and a stack of pending
// subdirectory names; open directory fds are bounded by the depth of the
// directories being worked on. Nothing is kept per entry.
package scan

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
)

// Emitter receives what one scan worker finds. Each worker has its own, so
// an Emitter needs no locking; it may batch and must pass everything on by
// the time Flush returns.
type Emitter interface {
	// Dir is called once for every directory id, including unreadable
	// and vanished ones (see plan.Dir flags). rel is its path relative to
	// the root, components joined by '/', "" for the root.
	Dir(d *plan.Dir, rel []byte) error
	// Entry is called for every non-directory entry. st is non-nil when
	// the scan had to lstat it.
	Entry(dir uint32, dev, ino uint64, typ uint8, name []byte, dirRel []byte, st *unix.Stat_t) error
	// Flush is called after each directory.
	Flush() error
}

// Options configure a scan.
type Options struct {
	Jobs          int
	OneFileSystem bool // do not descend into mount points (like rsync -x)
	// LstatAll lstats every entry, as on filesystems whose getdents
	// cannot be trusted (a safety switch, and how tests reach that path).
	LstatAll   bool
	NewEmitter func() Emitter
	// Counters: Done counts paths (directories and entries) seen.
	Counters *progress.Counters
	// OnError reports a per-path problem; the scan goes on.
	OnError func(rel string, err error)
	// Exclude lists directories, by (dev, ino), not to be scanned: the
	// destination and the job's state, should SRC reach them through a
	// bind mount. Such a directory is reported and left out.
	Exclude [][2]uint64
	// ExcludeTop lists names not to be scanned in the root directory, of
	// any type: the name of the job's state directory when it lives in
	// DST's root, where a copy of an entry of that name would land in the
	// job's own state. Such an entry is reported and left out.
	ExcludeTop []string
	// SkipTop lists names in the root directory that are not part of the
	// tree at all (the job's state directory in DST's root): left out
	// without a word.
	SkipTop []string
	// RootFd, when not 0, is root already open (the scan reopens it
	// through this fd, never by its path, which may name another
	// directory by now); root then only names it in messages.
	RootFd int
}

// Stats of a finished scan.
type Stats struct {
	Dirs         int64     `json:"dirs"`
	Entries      int64     `json:"entries"`
	ByType       [16]int64 `json:"-"`
	Lstats       int64     `json:"lstats"` // entries lstat'ed (DT_UNKNOWN or untrusted d_ino)
	MountPoints  int64     `json:"mount_points"`
	Errors       int64     `json:"errors"`
	UntrustedDev []uint64  `json:"untrusted_devs,omitempty"`
}

type handle struct {
	fd   int
	refs atomic.Int32
	id   uint32
	dev  uint64
	rel  []byte
}

func (h *handle) release() {
	if h.refs.Add(-1) == 0 {
		unix.Close(h.fd)
	}
}

type item struct {
	id     uint32
	parent *handle
	name   []byte
	dIno   uint64
}

type scanner struct {
	opt    Options
	nextID atomic.Uint64

	mu      sync.Mutex
	cond    *sync.Cond
	shared  []item
	idle    int
	pending int64 // items not yet fully processed
	done    bool
	fatal   error

	trustMu sync.Mutex
	trust   map[uint64]bool // per st_dev: are d_ino/d_type reliable

	stats struct {
		dirs, entries, lstats, mounts, errors atomic.Int64
		byType                                [16]atomic.Int64
	}
}

// Filesystem magic numbers whose getdents d_ino may differ from st_ino.
const (
	overlayfsMagic = 0x794c7630
	fuseMagic      = 0x65735546
)

// Scan walks root. A failure to open root itself is returned; per-path
// problems go to OnError and are counted. When ctx ends the workers stop
// and Scan returns the context's cause.
func Scan(ctx context.Context, root string, opt Options) (Stats, error) {
	if opt.Jobs < 1 {
		opt.Jobs = 1
	}
	s := &scanner{opt: opt, trust: make(map[uint64]bool)}
	s.cond = sync.NewCond(&s.mu)
	dirfd, name := unix.AT_FDCWD, root
	if opt.RootFd > 0 {
		// The root the caller opened and checked, not whatever its path
		// names now.
		dirfd, name = opt.RootFd, "."
	}
	fd, err := fsx.OpenNoAtime(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		return Stats{}, fmt.Errorf("open %s: %w", root, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return Stats{}, fmt.Errorf("stat %s: %w", root, err)
	}
	s.nextID.Store(1)
	// The root is processed by worker 0 as a pre-opened item.
	rootItem := item{id: 0}
	s.pending = 1

	stop := context.AfterFunc(ctx, func() { s.fail(context.Cause(ctx)) })
	defer stop()
	var workers errgroup.Group
	for i := 0; i < opt.Jobs; i++ {
		w := &worker{s: s, em: opt.NewEmitter(), buf: make([]byte, 64<<10)}
		if i == 0 {
			w.stack = append(w.stack, rootItem)
			w.rootFd, w.rootSt = fd, &st
		}
		workers.Go(func() error {
			w.run()
			return nil
		})
	}
	workers.Wait()
	out := Stats{
		Dirs: s.stats.dirs.Load(), Entries: s.stats.entries.Load(), Lstats: s.stats.lstats.Load(),
		MountPoints: s.stats.mounts.Load(), Errors: s.stats.errors.Load(),
	}
	for i := range out.ByType {
		out.ByType[i] = s.stats.byType[i].Load()
	}
	for dev, ok := range s.trust {
		if !ok {
			out.UntrustedDev = append(out.UntrustedDev, dev)
		}
	}
	return out, s.fatal
}

func (s *scanner) fail(err error) {
	s.mu.Lock()
	if s.fatal == nil {
		s.fatal = err
	}
	s.done = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// trusted reports whether getdents of directory fd on dev can be used
// without lstat: decided once per device from the filesystem type.
func (s *scanner) trusted(fd int, dev uint64) bool {
	s.trustMu.Lock()
	defer s.trustMu.Unlock()
	if t, ok := s.trust[dev]; ok {
		return t
	}
	var sfs unix.Statfs_t
	t := true
	if err := unix.Fstatfs(fd, &sfs); err == nil {
		switch uint32(sfs.Type) {
		case overlayfsMagic, fuseMagic:
			t = false
		}
	}
	s.trust[dev] = t
	return t
}

func (s *scanner) distrust(dev uint64) {
	s.trustMu.Lock()
	s.trust[dev] = false
	s.trustMu.Unlock()
}

type dent struct {
	ino        uint64
	typ        uint8
	start, end int
}

type worker struct {
	s      *scanner
	em     Emitter
	buf    []byte
	ents   []dent
	stack  []item
	rel    []byte
	rootFd int
	rootSt *unix.Stat_t
}

func (w *worker) run() {
	s := w.s
	for {
		var it item
		if n := len(w.stack); n > 0 {
			it = w.stack[n-1]
			w.stack = w.stack[:n-1]
		} else {
			s.mu.Lock()
			for len(s.shared) == 0 && !s.done {
				s.idle++
				s.cond.Wait()
				s.idle--
			}
			if s.done {
				s.mu.Unlock()
				return
			}
			n := len(s.shared)
			it = s.shared[n-1]
			s.shared = s.shared[:n-1]
			s.mu.Unlock()
		}
		children := w.process(it)
		s.mu.Lock()
		s.pending += int64(children) - 1
		if s.pending == 0 {
			s.done = true
			s.cond.Broadcast()
		} else if s.idle > 0 && len(w.stack) > 1 {
			// Share the oldest (shallowest, likely largest) half.
			k := len(w.stack) / 2
			s.shared = append(s.shared, w.stack[:k]...)
			w.stack = append(w.stack[:0], w.stack[k:]...)
			s.cond.Broadcast()
		}
		done := s.done
		s.mu.Unlock()
		if done {
			// Release anything left (only after a fatal error).
			for _, it := range w.stack {
				if it.parent != nil {
					it.parent.release()
				}
			}
			w.stack = nil
			return
		}
	}
}

func (w *worker) report(rel []byte, name []byte, err error) {
	w.s.stats.errors.Add(1)
	if w.s.opt.Counters != nil {
		w.s.opt.Counters.Errors.Add(1)
	}
	if w.s.opt.OnError != nil {
		w.s.opt.OnError(join(rel, name), err)
	}
}

func join(rel, name []byte) string {
	if len(rel) == 0 {
		return string(name)
	}
	if len(name) == 0 {
		return string(rel)
	}
	return string(rel) + "/" + string(name)
}

// process reads one directory and returns how many subdirectories it pushed.
func (w *worker) process(it item) int {
	var d plan.Dir
	d.ID = it.id
	fd, st, ok := w.openDir(it, &d)
	if !ok {
		return 0
	}
	d.SetStat(&st)
	if !w.emitDir(&d) {
		unix.Close(fd)
		return 0
	}
	h := &handle{fd: fd, id: d.ID, dev: st.Dev, rel: append([]byte(nil), w.rel...)}
	h.refs.Store(1)
	defer h.release()
	children := w.readDir(h, &st)
	if err := w.em.Flush(); err != nil {
		w.s.fail(err)
	}
	return children
}

// openDir opens the directory of item it (the root is open already) and
// stats it, filling d's parent and name and w.rel. ok is false when it is
// not to be read: it could not be opened (it is emitted as unreadable or
// gone), it is the destination or the state, or a mount point left out
// (-x); it is then emitted and its parent's handle released.
func (w *worker) openDir(it item, d *plan.Dir) (fd int, st unix.Stat_t, ok bool) {
	s := w.s
	if it.parent == nil { // root
		w.rel = w.rel[:0]
		return w.rootFd, *w.rootSt, true
	}
	p := it.parent
	d.Parent, d.Name = p.id, it.name
	w.rel = append(w.rel[:0], p.rel...)
	if len(w.rel) > 0 {
		w.rel = append(w.rel, '/')
	}
	w.rel = append(w.rel, it.name...)
	skip := func(flags uint8) (int, unix.Stat_t, bool) {
		d.Flags |= flags
		w.emitDir(d)
		return -1, st, false
	}
	fd, err := fsx.OpenNoAtime(p.fd, string(it.name), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
	if err != nil {
		w.report(p.rel, it.name, fmt.Errorf("open directory: %w", err))
		// Keep its metadata if it still exists, so that the copy can at
		// least create it; otherwise it is gone.
		flags := plan.DirGone
		if err2 := unix.Fstatat(p.fd, string(it.name), &st, unix.AT_SYMLINK_NOFOLLOW); err2 == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			d.SetStat(&st)
			flags = plan.DirUnreadable
		}
		p.release()
		return skip(flags)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		w.report(p.rel, it.name, fmt.Errorf("stat directory: %w", err))
		p.release()
		return skip(plan.DirGone)
	}
	p.release()
	if s.excluded(&st) {
		unix.Close(fd)
		w.report(p.rel, it.name, fmt.Errorf("is the destination or the job's state (reached through a bind mount?): left out"))
		return skip(plan.DirGone)
	}
	if st.Dev != p.dev {
		s.stats.mounts.Add(1)
		d.Flags |= plan.DirMountPoint
		if s.opt.OneFileSystem {
			d.SetStat(&st)
			unix.Close(fd)
			return skip(plan.DirMountSkipped)
		}
	} else if it.dIno != 0 && it.dIno != st.Ino {
		s.distrust(st.Dev)
	}
	return fd, st, true
}

// readDir reads the open directory h (stat st) with getdents: entries go
// to the emitter, subdirectories onto the worker's stack. It returns how
// many subdirectories it pushed.
func (w *worker) readDir(h *handle, st *unix.Stat_t) int {
	s := w.s
	lstatAll := s.opt.LstatAll || !s.trusted(h.fd, st.Dev)
	children := 0
	for {
		n, err := unix.Getdents(h.fd, w.buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			w.report(h.rel, nil, fmt.Errorf("read directory: %w", err))
			return children
		}
		if n == 0 {
			return children
		}
		w.ents = w.ents[:0]
		dotIno := uint64(0)
		chunk := w.buf[:n]
		if err := fsx.ParseDirents(chunk, func(ino uint64) { dotIno = ino }, func(ino uint64, typ uint8, name []byte) {
			start := cap(chunk) - cap(name)
			w.ents = append(w.ents, dent{ino: ino, typ: typ, start: start, end: start + len(name)})
		}); err != nil {
			w.report(h.rel, nil, err)
			return children
		}
		if dotIno != 0 && dotIno != st.Ino && !lstatAll {
			s.distrust(st.Dev)
			lstatAll = true
		}
		for _, e := range w.ents {
			pushed, ok := w.entry(h, st, chunk[e.start:e.end], e, lstatAll)
			if !ok {
				return children
			}
			children += pushed
		}
		if c := s.opt.Counters; c != nil {
			c.Done.Add(int64(len(w.ents)))
		}
	}
}

// entry handles one entry of directory h: a subdirectory is pushed (1), an
// entry of any other type emitted (0). It lstats only where getdents
// cannot be trusted. ok is false after a fatal error.
func (w *worker) entry(h *handle, st *unix.Stat_t, name []byte, e dent, lstatAll bool) (pushed int, ok bool) {
	s := w.s
	if h.id == 0 {
		if s.named(s.opt.SkipTop, name) {
			return 0, true
		}
		if s.named(s.opt.ExcludeTop, name) {
			w.report(h.rel, name, errExcludedTop)
			return 0, true
		}
	}
	typ, ino, dev := e.typ, e.ino, st.Dev
	var est *unix.Stat_t
	if typ == fsx.TypeUnknown || (lstatAll && typ != fsx.TypeDir) {
		var lst unix.Stat_t
		s.stats.lstats.Add(1)
		if err := unix.Fstatat(h.fd, string(name), &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				w.report(h.rel, name, fmt.Errorf("lstat: %w", err))
			}
			return 0, true
		}
		typ, ino, dev = fsx.TypeOfMode(lst.Mode), lst.Ino, lst.Dev
		est = &lst
	}
	if typ == fsx.TypeDir {
		id := s.nextID.Add(1) - 1
		if id > math.MaxUint32-1 {
			s.fail(errors.New("more than 4 billion directories"))
			return 0, false
		}
		h.refs.Add(1)
		w.stack = append(w.stack, item{id: uint32(id), parent: h, name: append([]byte(nil), name...), dIno: ino})
		return 1, true
	}
	s.stats.entries.Add(1)
	s.stats.byType[typ&15].Add(1)
	if err := w.em.Entry(h.id, dev, ino, typ, name, h.rel, est); err != nil {
		s.fail(err)
		return 0, false
	}
	return 0, true
}

// emitDir passes a directory record on; false after a fatal emitter error.
func (w *worker) emitDir(d *plan.Dir) bool {
	w.s.stats.dirs.Add(1)
	if c := w.s.opt.Counters; c != nil && d.ID == 0 {
		c.Done.Add(1)
	}
	if err := w.em.Dir(d, w.rel); err != nil {
		w.s.fail(err)
		return false
	}
	if d.Flags != 0 {
		if err := w.em.Flush(); err != nil {
			w.s.fail(err)
			return false
		}
	}
	return true
}

// errExcludedTop is the report of an entry of the root named in
// ExcludeTop.
var errExcludedTop = errors.New("has the name of hlcp's state directory in DST: not copied (pass --state DIR to keep the state elsewhere and copy it)")

// named reports whether name is one of names.
func (s *scanner) named(names []string, name []byte) bool {
	for _, n := range names {
		if string(name) == n {
			return true
		}
	}
	return false
}

func (s *scanner) excluded(st *unix.Stat_t) bool {
	for _, x := range s.opt.Exclude {
		if st.Dev == x[0] && st.Ino == x[1] {
			return true
		}
	}
	return false
}
