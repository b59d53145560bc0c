package copier

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
)

// Task sizes. A create task is a batch of groups (the first path of each);
// a link task is a batch of link records, cut where the destination
// directory changes once it holds minLinkTask records, so that a directory
// is mostly linked into by one worker at a time.
// A task's buffer starts at the size its kind usually needs (64 records
// of about 80 bytes; a full link task) and grows for longer names.
const (
	maxCreateRecs = 64
	maxTaskBytes  = 64 << 10
	createTaskBuf = 8 << 10
	minLinkTask   = 256
	maxLinkTask   = 1024
	maxLinkBytes  = 64 << 10
	ringSize      = 256 // links per io_uring_enter
)

type task struct {
	seq    int64
	endOff int64 // file offset after the task's last record
	group  int64 // create tasks: the index in the plan of the first record's group
	recs   [][]byte
	buf    []byte
	counts []int64 // create tasks: the paths of each record's group
	fds    []int32 // create tasks: each record's source file opened by the prefetcher, or -1
	links  bool    // recs are link records
}

func (t *task) add(rec []byte) {
	// recs point into buf; when buf must grow, re-point them.
	if len(t.buf)+len(rec) > cap(t.buf) {
		nb := make([]byte, len(t.buf), 2*cap(t.buf)+len(rec))
		copy(nb, t.buf)
		off := 0
		for i, r := range t.recs {
			t.recs[i] = nb[off : off+len(r)]
			off += len(r)
		}
		t.buf = nb
	}
	start := len(t.buf)
	t.buf = append(t.buf, rec...)
	t.recs = append(t.recs, t.buf[start:len(t.buf)])
}

func (t *task) reset() {
	t.recs = t.recs[:0]
	t.buf = t.buf[:0]
	t.counts = t.counts[:0]
	t.fds = t.fds[:0]
	t.endOff = -1
}

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

// tracker turns out-of-order task completions into a watermark: the file
// offset below which every record is done, and the groups below it. A task
// that was cut short (the copy is stopping) holds the watermark where it is
// for good: its records, and all after them, are redone by the next run.
type tracker struct {
	mu        sync.Mutex
	cond      *sync.Cond
	next      int64
	done      map[int64]taskEnd
	watermark int64
	groups    int64 // groups below the watermark (create tasks)
	sent      int64 // tasks sent, once the dispatcher has sent the last one; -1 before
	finished  bool  // every task sent has completed
}

type taskEnd struct{ off, groups int64 }

func newTracker(off, groups int64) *tracker {
	t := &tracker{done: make(map[int64]taskEnd), watermark: off, groups: groups, sent: -1}
	t.cond = sync.NewCond(&t.mu)
	return t
}

const aborted = -2 // endOff of a task that did not finish

func (t *tracker) complete(seq, endOff, groups int64) {
	t.mu.Lock()
	t.done[seq] = taskEnd{endOff, groups}
	for {
		e, ok := t.done[t.next]
		if !ok || e.off == aborted {
			break
		}
		delete(t.done, t.next)
		t.next++
		t.groups += e.groups
		if e.off >= 0 {
			t.watermark = e.off
		}
	}
	t.finished = t.sent >= 0 && t.next == t.sent
	t.mu.Unlock()
	t.cond.Broadcast()
}

// close says that n tasks were sent in all.
func (t *tracker) close(n int64) {
	t.mu.Lock()
	t.sent = n
	t.finished = t.next == n
	t.mu.Unlock()
	t.cond.Broadcast()
}

func (t *tracker) get() (off, groups int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.watermark, t.groups
}

// Marks are where a copy stands: the plan offset below which every group's
// inode is created (and the number of those groups), and the link file
// offset below which every link is made.
type Marks struct {
	Plan   int64
	Groups int64
	Links  int64
}

// Input is the plan to copy: the plan file and the link file (plan.PlanFile,
// plan.LinksFile) in Dir, as they were written.
type Input struct {
	Dir         *fsx.Dir
	Plan, Links blockfile.Info
}

// Copy copies the plan: it creates each group's inode at its first path,
// in inode order (the plan file), and makes the group's other paths as
// links (the link file, sorted by chunk of groups, then by destination
// directory). Both go on at once: the links of a chunk
// are made as soon as the chunk's inodes exist, by the same workers, while
// the creates go on with the next chunks. from is where an earlier run
// stopped (or zero). checkpoint, if not nil, is called from another
// goroutine about every `every` with the current marks, and once at the
// end; an error from it stops the copy. ctr gets groups (Done), paths and
// bytes.
func (c *Copier) Copy(in Input, from Marks, ctr *progress.Counters, checkpoint func(Marks) error, every time.Duration) error {
	pr, err := plan.OpenReader(in.Dir, plan.PlanFile, in.Plan, from.Plan)
	if err != nil {
		return err
	}
	defer pr.Close()
	lr, err := plan.OpenReader(in.Dir, plan.LinksFile, in.Links, from.Links)
	if err != nil {
		return err
	}
	defer lr.Close()
	if ctr == nil {
		ctr = new(progress.Counters)
	}

	// Two queues. Creates wait on the disks (and the prefetcher keeps the
	// source busy ahead of them), links only on the CPU and the
	// destination's journal. Half the workers (at least one) take link
	// tasks first, the others create tasks first; each takes the other
	// kind when its own has none waiting. A link task waiting behind
	// create tasks would leave the links of finished chunks to the end of
	// the copy, after the data; with every worker taking links first, the
	// disks stood idle while a chunk's links were made (on a 10M-path tree
	// the copy alternated between data at 400 MiB/s and links at 0 B/s).
	tasks := make(chan *task, 2*c.opt.Jobs)
	ltasks := make(chan *task, c.opt.Jobs)
	// Tasks are reused, each kind in its own pool, so a create task
	// does not carry a link task's larger buffer.
	free := make(chan *task, 4*c.opt.Jobs+prefetchQueue+prefetchWorkers)
	lfree := make(chan *task, 2*c.opt.Jobs+1)
	poolOf := func(links bool) chan *task {
		if links {
			return lfree
		}
		return free
	}
	pf := c.newPrefetcher(tasks)
	ct := newTracker(from.Plan, from.Groups)
	lt := newTracker(from.Links, 0)
	// The link mark is read before the create mark: a link below it was
	// sent only once its chunk's inodes were below the create watermark,
	// which only grows, so the create mark read after it covers them. Read
	// the other way round, a link completing in between could be recorded
	// as done while its inode's create is not, and a resume would recreate
	// that inode under the links already made to the old one.
	marks := func() Marks {
		loff, _ := lt.get()
		off, groups := ct.get()
		return Marks{Plan: off, Groups: groups, Links: loff}
	}
	var wg sync.WaitGroup
	linkFirst := max(1, c.opt.Jobs/2)
	for i := 0; i < c.opt.Jobs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{c: c, ctr: ctr, data: fsx.DataCopier{Caps: c.caps, NoDirect: c.opt.NoDirect}, pf: pf}
			if !c.opt.NoRing {
				if r, err := fsx.NewRing(ringSize); err == nil {
					w.ring = r
				}
			}
			defer func() {
				if w.ring != nil {
					w.ring.Close()
				}
			}()
			first, second := ltasks, tasks
			if i >= linkFirst {
				first, second = tasks, ltasks
			}
			for {
				t := nextTask(&first, &second)
				if t == nil {
					break
				}
				tr := ct
				if t.links {
					tr = lt
					w.linkTask(t)
				} else {
					w.createTask(t)
				}
				// A task cut short by a stop has left records undone; so
				// may one that ran while the stop came in.
				end := t.endOff
				if c.Fatal() != nil {
					end = aborted
				}
				tr.complete(t.seq, end, int64(len(t.counts)))
				select {
				case poolOf(t.links) <- t:
				default:
				}
			}
		}()
	}
	var poolMu sync.Mutex
	newTask := func(links bool, seq *int64) *task {
		var t *task
		size := createTaskBuf
		if links {
			size = maxLinkBytes + 512
		}
		select {
		case t = <-poolOf(links):
			t.reset()
		default:
			t = &task{buf: make([]byte, 0, size), endOff: -1}
		}
		poolMu.Lock()
		t.seq = *seq
		*seq++
		poolMu.Unlock()
		t.links = links
		return t
	}

	// Checkpoints run beside the copy: the marks are taken first, then the
	// checkpoint (syncfs + journal) makes everything below them durable,
	// while the workers go on. The ticker also wakes the link dispatcher
	// now and then, so that it sees a stop even when nothing completes.
	stopCkpt := make(chan struct{})
	ckptDone := make(chan struct{})
	go func() {
		defer close(ckptDone)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-stopCkpt:
				return
			case <-tick.C:
				ct.cond.Broadcast()
				if every <= 0 || checkpoint == nil || time.Since(last) < every {
					continue
				}
				last = time.Now()
				if err := checkpoint(marks()); err != nil {
					c.setFatal(fmt.Errorf("checkpoint: %w", err))
					return
				}
			}
		}
	}()

	// The creates: the first path of each group, in plan order.
	var cerr error
	var dispatchers sync.WaitGroup
	dispatchers.Add(1)
	go func() {
		defer dispatchers.Done()
		var seq int64
		group := from.Groups
		cur := newTask(false, &seq)
		cur.group = group
		var prev []byte
		for c.Fatal() == nil {
			off := pr.Offset()
			rec, err := pr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				cerr = fmt.Errorf("read plan: %w", err)
				c.setFatal(cerr)
				break
			}
			if prev != nil && plan.SameInode(prev, rec) {
				cur.counts[len(cur.counts)-1]++
				continue
			}
			// A new group starts: the task so far ends at a group boundary.
			if len(cur.recs) >= maxCreateRecs || len(cur.buf) >= maxTaskBytes {
				cur.endOff = off
				pf.in <- cur
				cur = newTask(false, &seq)
				cur.group = group
			}
			group++
			prev = append(prev[:0], rec...)
			cur.add(rec)
			cur.counts = append(cur.counts, 1)
			cur.fds = append(cur.fds, -1)
		}
		if c.Fatal() == nil {
			cur.endOff = pr.Offset()
		}
		// Sent even when empty: its end offset is the end of the plan.
		if len(cur.recs) > 0 || cur.endOff >= 0 {
			pf.in <- cur
		} else {
			seq-- // not sent
		}
		if pf.in != tasks {
			close(pf.in)
			pf.wait()
		}
		ct.close(seq)
	}()

	// The links, a chunk at a time once the chunk's inodes exist.
	ready := func(chunk uint32) bool {
		ct.mu.Lock()
		defer ct.mu.Unlock()
		for !ct.finished && ct.groups < int64(chunk+1)*plan.ChunkGroups {
			if c.Fatal() != nil {
				return false
			}
			ct.cond.Wait()
		}
		return c.Fatal() == nil
	}
	var lerr error
	var lseq int64
	cur := newTask(true, &lseq)
	var dir uint32
	readyChunk := int64(-1)
	for c.Fatal() == nil {
		off := lr.Offset()
		rec, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			lerr = fmt.Errorf("read links: %w", err)
			break
		}
		chunk, d := plan.LinkKey(rec)
		if int64(chunk) > readyChunk {
			if len(cur.recs) > 0 {
				cur.endOff = off
				ltasks <- cur
				cur = newTask(true, &lseq)
			}
			if !ready(chunk) {
				break
			}
			readyChunk = int64(chunk)
		} else if len(cur.recs) >= maxLinkTask || len(cur.buf) >= maxLinkBytes || (d != dir && len(cur.recs) >= minLinkTask) {
			cur.endOff = off
			ltasks <- cur
			cur = newTask(true, &lseq)
		}
		dir = d
		cur.add(rec)
	}
	if lerr == nil && c.Fatal() == nil {
		cur.endOff = lr.Offset()
	}
	if len(cur.recs) > 0 || cur.endOff >= 0 {
		ltasks <- cur
	}
	close(ltasks)
	dispatchers.Wait()
	close(tasks)
	wg.Wait()
	close(stopCkpt)
	<-ckptDone
	if lerr != nil {
		return lerr
	}
	if cerr != nil {
		return cerr
	}
	if err := c.Fatal(); err != nil {
		if checkpoint != nil {
			checkpoint(marks())
		}
		return err
	}
	if checkpoint != nil {
		return checkpoint(marks())
	}
	return nil
}

// nextTask takes the next task: one from the first queue if one is
// waiting, else whichever comes first. A closed queue is set to nil; nil
// means both are closed and empty.
func nextTask(first, second *chan *task) *task {
	for *first != nil || *second != nil {
		if *first != nil {
			select {
			case t, ok := <-*first:
				if ok {
					return t
				}
				*first = nil
				continue
			default:
			}
		}
		select {
		case t, ok := <-*first:
			if ok {
				return t
			}
			*first = nil
		case t, ok := <-*second:
			if ok {
				return t
			}
			*second = nil
		}
	}
	return nil
}

type worker struct {
	c    *Copier
	ctr  *progress.Counters
	pf   *prefetcher
	data fsx.DataCopier
	x    fsx.Xattrs
	lbuf []byte
	// ring batches the links (nil: one linkat per link).
	ring  *fsx.Ring
	links []plan.Link
	lops  []fsx.LinkOp
	// metaBad: the inode being created did not get all of its metadata
	// (see plan.CopiedMetaIncomplete).
	metaBad bool
	// copied: the records of a create task's groups, for the move.
	copied []byte
}

// createTask creates the inode of each group of a create task at its
// first path.
func (w *worker) createTask(t *task) {
	c := w.c
	n := 0
	for _, fd := range t.fds {
		if fd >= 0 {
			n++
		}
	}
	w.pf.taken(n)
	defer func() { // the prefetched files of records not reached
		for i, fd := range t.fds {
			if fd >= 0 {
				unix.Close(int(fd))
				t.fds[i] = -1
			}
		}
	}()
	w.copied = w.copied[:0]
	defer w.recordCopied(t)
	for i, rec := range t.recs {
		if c.Fatal() != nil {
			return // stopping: the rest is redone from the checkpoint
		}
		e, err := plan.DecodeEntry(rec)
		if err != nil {
			c.setFatal(err)
			return
		}
		sfd := int(t.fds[i])
		t.fds[i] = -1 // create closes it
		if ls := w.create(e, e.Dir, e.Name, sfd); ls != nil {
			c.Stats.Groups.Add(1)
			w.ctr.Done.Add(1)
			if ls.nlink > uint64(t.counts[i]) {
				c.Stats.OutsideLinks.Add(1)
			}
			if c.opt.Copied != nil {
				var flags uint8
				if ls.changed {
					flags |= plan.CopiedChanged
				}
				if ls.metaBad {
					flags |= plan.CopiedMetaIncomplete
				}
				w.copied = plan.AppendCopied(w.copied, t.group+int64(i), ls.ctime, flags)
			}
		} else if c.Fatal() != nil {
			return // stopping: the rest is redone from the checkpoint
		}
		if c.opt.Copied != nil && len(w.copied) < (i+1)*plan.CopiedRecord {
			// No copy: a record of zeros, which reads as none.
			w.copied = append(w.copied, make([]byte, plan.CopiedRecord)...)
		}
	}
}

// recordCopied writes the records of the groups of t that were reached,
// with one write (the move checks them before it removes a source).
func (w *worker) recordCopied(t *task) {
	c := w.c
	if c.opt.Copied == nil || len(w.copied) == 0 {
		return
	}
	if err := c.opt.Copied.PutRange(t.group, w.copied); err != nil {
		c.setFatal(err)
	}
}

// linkTask makes the links of a link task: in batches through the
// worker's io_uring where there is one, else one linkat at a time.
func (w *worker) linkTask(t *task) {
	c := w.c
	var l plan.Link
	for i := 0; i < len(t.recs); {
		if c.Fatal() != nil {
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
		if c.Fatal() != nil {
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
			c.fail(e.Dir, e.Name, fmt.Errorf("not linked to %s, which was not copied (see its error): %w", fsx.Quote(c.dirs.Rel(ls.dir, ls.name)), err))
			return
		default:
			c.fail(e.Dir, e.Name, fmt.Errorf("link to %s: %w", fsx.Quote(c.dirs.Rel(ls.dir, ls.name)), err))
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

// create makes a new destination inode at (dir, name) as a copy of the
// source path src (whose scan gave its dev, ino and type). sfd is src
// already open for reading, or -1; create closes it. It returns nil after
// reporting an error.
func (w *worker) create(src plan.Entry, dir uint32, name []byte, sfd int) *linkSrc {
	c := w.c
	if sfd >= 0 {
		defer unix.Close(sfd)
	}
	w.metaBad = false
	spfd, err := c.srcDirs.Acquire(src.Dir)
	if err != nil {
		c.fail(src.Dir, src.Name, fmt.Errorf("open source directory: %w", err))
		return nil
	}
	defer c.srcDirs.Release(src.Dir)
	dpfd, err := c.dstDirs.Acquire(dir)
	if err != nil {
		c.fail(dir, name, fmt.Errorf("open destination directory: %w", err))
		return nil
	}
	defer c.dstDirs.Release(dir)

	var st unix.Stat_t
	switch src.Type {
	case fsx.TypeReg:
		err = w.copyFile(spfd, dpfd, sfd, src, string(name), &st)
	case fsx.TypeLnk:
		err = w.copySymlink(spfd, dpfd, src, string(name), &st)
	case fsx.TypeFifo, fsx.TypeSock, fsx.TypeChr, fsx.TypeBlk:
		err = w.copySpecial(spfd, dpfd, src, string(name), &st)
	default:
		err = fmt.Errorf("unsupported file type %d", src.Type)
	}
	if err != nil {
		if errors.Is(err, errChanged) {
			c.Stats.Changed.Add(1)
		}
		c.fail(src.Dir, src.Name, err)
		if !errors.Is(err, errChanged) {
			if !isFatal(err) {
				// Nothing must stay at the path that the group's links
				// would link to: a file left by an earlier run is not a
				// copy of what the source has now.
				unix.Unlinkat(dpfd, string(name), 0)
			}
			return nil
		}
	}
	c.Stats.Paths.Add(1)
	w.ctr.Paths.Add(1)
	return &linkSrc{dir: dir, name: append([]byte(nil), name...), src: plan.Entry{Dev: src.Dev, Ino: src.Ino, Dir: src.Dir, Type: src.Type, Name: append([]byte(nil), src.Name...)}, nlink: uint64(st.Nlink), size: st.Size,
		ctime: st.Ctim, changed: err != nil, metaBad: w.metaBad}
}

var errChanged = errors.New("changed while being copied (the copy may not match any single state of the file)")

// checkInode verifies that what a source path names now is the inode the
// scan saw there.
func checkInode(st *unix.Stat_t, e plan.Entry, devMap map[uint64]uint64) error {
	if d, ok := devMap[e.Dev]; ok {
		e.Dev = d
	}
	if st.Ino != e.Ino || st.Dev != e.Dev {
		return fmt.Errorf("replaced since the scan (inode %d:%d, now %d:%d)", e.Dev, e.Ino, st.Dev, st.Ino)
	}
	if t := fsx.TypeOfMode(st.Mode); t != e.Type {
		return fmt.Errorf("changed type since the scan (%s, now %s)", fsx.TypeName(e.Type), fsx.TypeName(t))
	}
	return nil
}

func sameState(a, b *unix.Stat_t) bool {
	return a.Size == b.Size && a.Mtim == b.Mtim && a.Ctim == b.Ctim
}

func vanished(err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("vanished since the scan: %w", err)
	}
	return err
}

// createFile makes name in dpfd exclusively, replacing what an interrupted
// run left there.
func createFile(dpfd int, name string, mode uint32) (int, error) {
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dpfd, name, flags, mode)
	if errors.Is(err, unix.EEXIST) {
		if err := unix.Unlinkat(dpfd, name, 0); err != nil {
			return -1, fmt.Errorf("replace existing: %w", err)
		}
		fd, err = unix.Openat(dpfd, name, flags, mode)
	}
	return fd, err
}

// copyFile copies the regular file src (open as sfd, which the caller
// closes, or -1 to open it here) to name in dpfd.
func (w *worker) copyFile(spfd, dpfd, sfd int, src plan.Entry, name string, st *unix.Stat_t) error {
	c := w.c
	if sfd < 0 {
		var err error
		sfd, err = c.openSource(spfd, src.Name)
		if err != nil {
			return fmt.Errorf("open: %w", vanished(err))
		}
		defer unix.Close(sfd)
	}
	if err := unix.Fstat(sfd, st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if err := checkInode(st, src, w.c.opt.SrcDevMap); err != nil {
		return err
	}
	var changed bool
	first := *st // the state the scan-time identity check saw
	for attempt := 0; ; attempt++ {
		dfd, err := createFile(dpfd, name, createMode(st.Mode))
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		sparse := st.Size > 0 && st.Blocks*512 < st.Size
		n, m, err := w.data.Copy(sfd, dfd, st.Size, sparse, st.Dev, c.dstDev)
		if err != nil && !errors.Is(err, fsx.ErrShort) {
			unix.Close(dfd)
			unix.Unlinkat(dpfd, name, 0) // no torn copy left behind
			return fmt.Errorf("copy data: %w", err)
		}
		var after unix.Stat_t
		if e2 := unix.Fstat(sfd, &after); e2 != nil {
			unix.Close(dfd)
			return fmt.Errorf("stat: %w", e2)
		}
		if err != nil || !sameState(st, &after) {
			*st = after
			if attempt < c.opt.Retries {
				unix.Close(dfd)
				continue
			}
			changed = true
		}
		c.Stats.Bytes.Add(n)
		w.ctr.Bytes.Add(n)
		switch m {
		case fsx.MethodClone:
			c.Stats.Cloned.Add(1)
		case fsx.MethodCopyRange:
			c.Stats.CopyRange.Add(1)
		case fsx.MethodSendfile:
			c.Stats.Sendfile.Add(1)
		case fsx.MethodDirect:
			c.Stats.Direct.Add(1)
		case fsx.MethodReadWrite:
			c.Stats.ReadWrite.Add(1)
		}
		w.setMeta(dfd, sfd, st, src)
		if changed {
			// The copy may mix two states of the file: it gets the times
			// of the state before the copy, which the file no longer has,
			// so that nothing (a move's check, rsync's quick check) takes
			// it for a copy of the current file.
			futimens(dfd, []unix.Timespec{first.Atim, first.Mtim})
		}
		if err := unix.Close(dfd); err != nil {
			return fmt.Errorf("close: %w", err)
		}
		break
	}
	if changed {
		return errChanged
	}
	return nil
}

// setMeta gives the open destination file dfd the owner, xattrs, mode and
// times of the source (in that order: chown clears setuid bits and
// security.capability, chmod must follow it, and times come last). The
// new file is fstat'ed first: the chown is left out where it has the
// owner already, the chmod where it was created with its final mode (a
// fresh file has no setuid bit for the chown to clear), so the common
// case costs one call instead of two.
func (w *worker) setMeta(dfd, sfd int, st *unix.Stat_t, src plan.Entry) {
	c := w.c
	var now unix.Stat_t
	if err := unix.Fstat(dfd, &now); err != nil {
		now.Uid, now.Gid, now.Mode = ^uint32(0), ^uint32(0), ^uint32(0) // unknown: change both
	}
	if c.opt.Owner {
		if now.Uid != st.Uid || now.Gid != st.Gid {
			if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
				w.metaFail(src, "chown", err)
			}
			now.Mode = ^uint32(0) // a chown may clear setuid and setgid bits
		}
	} else {
		c.ownerWarn(st.Uid, st.Gid)
	}
	if err := w.x.CopyFd(sfd, dfd, w.xattrErr); err != nil {
		w.metaBad = true
		c.fail(src.Dir, src.Name, err)
	}
	if now.Mode&07777 != st.Mode&07777 {
		if err := unix.Fchmod(dfd, st.Mode&07777); err != nil {
			w.metaFail(src, "chmod", err)
		}
	}
	if err := futimens(dfd, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
		w.metaBad = true
		c.fail(src.Dir, src.Name, fmt.Errorf("set times: %w", err))
	}
}

// xattrErr is the copier's report of an xattr the destination refused,
// which also marks the inode's copy as lacking some of its metadata.
func (w *worker) xattrErr(e *fsx.XattrError) {
	w.metaBad = true
	w.c.xattrErr(e)
}

// metaFail reports a failed chown or chmod (see Copier.metaFail); one
// that is an error, not the destination's lack of owners or modes, marks
// the inode's copy as lacking some of its metadata.
func (w *worker) metaFail(src plan.Entry, op string, err error) {
	if !w.c.metaFail(src.Dir, src.Name, op, err) {
		w.metaBad = true
	}
}

// setMetaAt is setMeta for entries that cannot be opened (symlinks, device
// nodes, fifos, sockets): by name relative to their directory, never
// following a symlink.
func (w *worker) setMetaAt(spfd, dpfd int, name string, st *unix.Stat_t, src plan.Entry) {
	c := w.c
	if c.opt.Owner {
		if err := unix.Fchownat(dpfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			w.metaFail(src, "chown", err)
		}
	} else {
		c.ownerWarn(st.Uid, st.Gid)
	}
	if err := w.x.CopyPath(fsx.ProcPath(spfd, string(src.Name)), fsx.ProcPath(dpfd, name), w.xattrErr); err != nil {
		w.metaBad = true
		c.fail(src.Dir, src.Name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		err := unix.Fchmodat(dpfd, name, st.Mode&07777, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.EOPNOTSUPP) {
			err = chmodNoFollow(dpfd, name, st.Mode&07777)
		}
		if err != nil {
			w.metaFail(src, "chmod", err)
		}
	}
	if err := unix.UtimesNanoAt(dpfd, name, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		w.metaBad = true
		c.fail(src.Dir, src.Name, fmt.Errorf("set times: %w", err))
	}
}

// chmodNoFollow changes the mode of a device node, fifo or socket where the
// kernel has no fchmodat2: the node is opened with O_PATH|O_NOFOLLOW (which
// cannot open through a symlink swapped in meanwhile), checked, and changed
// through its /proc/self/fd link, which names that very inode.
func chmodNoFollow(dpfd int, name string, mode uint32) error {
	fd, err := unix.Openat(dpfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%s became a symlink", name)
	}
	return unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), mode)
}

func (w *worker) copySymlink(spfd, dpfd int, src plan.Entry, name string, st *unix.Stat_t) error {
	sname := string(src.Name)
	if err := unix.Fstatat(spfd, sname, st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("lstat: %w", vanished(err))
	}
	if err := checkInode(st, src, w.c.opt.SrcDevMap); err != nil {
		return err
	}
	t, err := fsx.Readlink(spfd, sname, w.lbuf)
	if err != nil {
		return fmt.Errorf("readlink: %w", vanished(err))
	}
	w.lbuf = t
	target := string(t)
	err = unix.Symlinkat(target, dpfd, name)
	if errors.Is(err, unix.EEXIST) {
		if err := unix.Unlinkat(dpfd, name, 0); err != nil {
			return fmt.Errorf("replace existing: %w", err)
		}
		err = unix.Symlinkat(target, dpfd, name)
	}
	if err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	w.setMetaAt(spfd, dpfd, name, st, src)
	return nil
}

func (w *worker) copySpecial(spfd, dpfd int, src plan.Entry, name string, st *unix.Stat_t) error {
	if err := unix.Fstatat(spfd, string(src.Name), st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("lstat: %w", vanished(err))
	}
	if err := checkInode(st, src, w.c.opt.SrcDevMap); err != nil {
		return err
	}
	mode := st.Mode & (unix.S_IFMT | 0o777)
	err := unix.Mknodat(dpfd, name, mode, int(st.Rdev))
	if errors.Is(err, unix.EEXIST) {
		if err := unix.Unlinkat(dpfd, name, 0); err != nil {
			return fmt.Errorf("replace existing: %w", err)
		}
		err = unix.Mknodat(dpfd, name, mode, int(st.Rdev))
	}
	if err != nil {
		return fmt.Errorf("mknod %s: %w", fsx.TypeName(src.Type), err)
	}
	w.setMetaAt(spfd, dpfd, name, st, src)
	return nil
}
