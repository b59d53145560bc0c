package copier

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hlcp/internal/msg"
	"sync"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
)

// linkSrc is an inode already made in the destination, to link to, and
// where it came from in the source, to copy it again when it is full
// (EMLINK) or when the destination has no hard links.
type linkSrc struct {
	dir   uint32 // destination path (dir, name) to link from
	name  []byte
	src   plan.Entry // the source path it was copied from
	nlink uint64     // source st_nlink
	size  int64
	// What the copy saw of the source (create's result only): its
	// ctime, whether it changed while copied, whether the copy lacks
	// some of its metadata.
	ctime   unix.Timespec
	changed bool
	metaBad bool
}

// linkTarget is where the paths of a group that had to be split are linked
// to: when the inode is full (EMLINK), the worker that sees it first makes
// a new copy and every later link of the group goes to that one.
type linkTarget struct {
	mu    sync.Mutex
	ls    linkSrc
	split bool // counted as a split group
}

// get returns the current link source (a copy: the target may move).
func (t *linkTarget) get() linkSrc {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ls
}

// linkTask makes the links of a link task: in batches through the
// worker's io_uring where there is one, else one linkat at a time.
func (w *worker) linkTask(t *task) {
	c := w.c
	var l plan.Link
	for i := 0; i < len(t.recs); {
		if c.stopping() {
			return
		}
		if w.ring != nil && !c.noLinks.Load() {
			n, err := w.linkBatch(t.recs[i:])
			if err != nil {
				c.setFatal(err)
				return
			}
			if n > 0 {
				i += n
				continue
			}
		}
		if err := plan.DecodeLink(t.recs[i], &l); err != nil {
			c.setFatal(err)
			return
		}
		w.linkOne(&l)
		i++
	}
}

// linkBatch links up to a ring's worth of the records recs with one
// io_uring_enter and returns how many records it took. A link that failed
// in the batch (an existing path left by an interrupted run, a full inode,
// a destination without hard links, a missing target) is made again by
// linkOne, which handles each of those cases; so is the whole batch when
// the ring turns out not to work (a kernel without IORING_OP_LINKAT
// answers EINVAL), and the ring is then given up.
func (w *worker) linkBatch(recs [][]byte) (int, error) {
	c := w.c
	n := min(len(recs), w.ring.Size())
	w.links = w.links[:0]
	w.lops = w.lops[:0]
	defer func() {
		for _, l := range w.links {
			c.dstDirs.Release(l.TDir)
			c.dstDirs.Release(l.Dir)
		}
	}()
	for _, rec := range recs[:n] {
		var l plan.Link
		if err := plan.DecodeLink(rec, &l); err != nil {
			return 0, err
		}
		sfd, err := c.dstDirs.Acquire(l.TDir)
		if err != nil {
			break // linkOne reports it
		}
		dfd, err := c.dstDirs.Acquire(l.Dir)
		if err != nil {
			c.dstDirs.Release(l.TDir)
			break
		}
		w.links = append(w.links, l)
		w.lops = append(w.lops, fsx.LinkOp{OldDir: sfd, OldName: l.TName, NewDir: dfd, NewName: l.Name})
	}
	if len(w.lops) == 0 {
		return 0, nil
	}
	if err := w.ring.Linkat(w.lops); err != nil {
		if !errors.Is(err, fsx.ErrNoRing) {
			return 0, err
		}
		w.ring.Close()
		w.ring = nil
		return 0, nil
	}
	einval := 0
	for i := range w.lops {
		if errors.Is(w.lops[i].Err, unix.EINVAL) {
			einval++
		}
	}
	if einval == len(w.lops) {
		// Not a linkat error: the kernel does not know the opcode.
		w.ring.Close()
		w.ring = nil
		return 0, nil
	}
	for i := range w.lops {
		if w.lops[i].Err == nil {
			w.linked()
			c.Stats.RingLinks.Add(1)
			continue
		}
		if c.stopping() {
			break
		}
		w.linkOne(&w.links[i])
	}
	return len(w.lops), nil
}

// splitTarget returns the shared target of l's group once the group has
// been split, or nil; with create, it makes the entry (at the group's
// first path) when there is none yet.
func (c *Copier) splitTarget(l *plan.Link, create bool) *linkTarget {
	if !create && !c.anySplit.Load() {
		return nil
	}
	key := string(binary.BigEndian.AppendUint32(nil, l.TDir)) + string(l.TName)
	c.splitMu.Lock()
	defer c.splitMu.Unlock()
	t := c.splits[key]
	if t == nil && create {
		src := l.Target()
		src.Name = append([]byte(nil), src.Name...)
		t = &linkTarget{ls: linkSrc{dir: l.TDir, name: src.Name, src: src}}
		if c.splits == nil {
			c.splits = make(map[string]*linkTarget)
		}
		c.splits[key] = t
		c.anySplit.Store(true)
	}
	return t
}

// linked counts a link made.
func (w *worker) linked() {
	w.c.Stats.Paths.Add(1)
	w.c.Stats.Links.Add(1)
	w.ctr.Paths.Add(1)
}

// linkOne makes the link l: to the group's first path, or to the copy that
// replaced it when the inode filled up.
func (w *worker) linkOne(l *plan.Link) {
	c := w.c
	e := l.Entry()
	tgt := c.splitTarget(l, false)
	for {
		var ls linkSrc
		if tgt != nil {
			ls = tgt.get()
		} else {
			ls = linkSrc{dir: l.TDir, name: l.TName, src: l.Target()}
		}
		if c.noLinks.Load() {
			w.extraCopy(&ls, e)
			return
		}
		err := w.link(&ls, e)
		switch {
		case err == nil:
			w.linked()
			return
		case errors.Is(err, unix.EMLINK):
			// The inode is full: copy it again here and link the rest of
			// the group to the new copy, unless another worker has just
			// done so: then link to its copy.
			if tgt == nil {
				tgt = c.splitTarget(l, true)
			}
			if w.moveTarget(tgt, &ls, e) {
				return
			}
		case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS):
			if !c.noLinks.Swap(true) {
				c.opt.OnWarn("nolinks", fmt.Sprintf("the destination does not support hard links (%v): every path gets its own copy of the data", err))
			}
			w.extraCopy(&ls, e)
			return
		case errors.Is(err, unix.ENOENT):
			c.fail(e.Dir, e.Name, fmt.Errorf("not linked to %s, which was not copied (see its error): %w", msg.Quote(c.dirs.Rel(ls.dir, ls.name)), err))
			return
		default:
			c.fail(e.Dir, e.Name, fmt.Errorf("link to %s: %w", msg.Quote(c.dirs.Rel(ls.dir, ls.name)), err))
			return
		}
	}
}

// moveTarget handles EMLINK on linking e to full, the group's target when
// the link was tried. It reports whether e is done; false means the target
// has moved meanwhile and the link is to be tried again.
func (w *worker) moveTarget(tgt *linkTarget, full *linkSrc, e plan.Entry) bool {
	tgt.mu.Lock()
	defer tgt.mu.Unlock()
	if tgt.ls.dir != full.dir || !bytes.Equal(tgt.ls.name, full.name) {
		return false
	}
	if !tgt.split {
		tgt.split = true
		w.c.Stats.SplitGroups.Add(1)
	}
	if nls := w.extraCopy(full, e); nls != nil {
		tgt.ls = *nls
	}
	return true
}

// extraCopy copies ls's source inode again to e's path.
func (w *worker) extraCopy(ls *linkSrc, e plan.Entry) *linkSrc {
	nls := w.create(ls.src, e.Dir, e.Name, -1)
	if nls != nil {
		w.c.Stats.ExtraCopies.Add(1)
		w.c.Stats.ExtraBytes.Add(nls.size)
		nls.src = ls.src
	}
	return nls
}

func (w *worker) link(ls *linkSrc, e plan.Entry) error {
	c := w.c
	sfd, err := c.dstDirs.Acquire(ls.dir)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	defer c.dstDirs.Release(ls.dir)
	dfd, err := c.dstDirs.Acquire(e.Dir)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	defer c.dstDirs.Release(e.Dir)
	sname, dname := string(ls.name), string(e.Name)
	err = unix.Linkat(sfd, sname, dfd, dname, 0)
	if errors.Is(err, unix.EEXIST) {
		// Left by an interrupted run: replace it.
		if err2 := unix.Unlinkat(dfd, dname, 0); err2 == nil {
			err = unix.Linkat(sfd, sname, dfd, dname, 0)
		}
	}
	return err
}
