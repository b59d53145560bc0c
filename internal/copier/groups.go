package copier

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
)

// Task sizes. A task is a batch of whole small groups, or one chunk of a
// large group; bigChunk bounds the memory a group with millions of links
// takes: it is streamed chunk by chunk.
const (
	maxTaskRecs  = 512
	maxTaskBytes = 64 << 10
	bigChunk     = 4096
)

type task struct {
	seq    int64
	endOff int64 // plan offset after the task's last record; -1 when that is inside a group
	recs   [][]byte
	buf    []byte
	link   *linkTarget      // continuation chunk of a large group: link every record to this
	result chan *linkTarget // head chunk of a large group: where to link the rest
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
	t.link = nil
	t.result = nil
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
}

// linkTarget is where the paths of one group are linked to. The chunks of
// a large group share it: when the inode is full (EMLINK), the chunk that
// sees it first makes a new copy and every chunk links to that one.
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

// tracker turns out-of-order task completions into a watermark: the plan
// offset below which every group is done. A task that was cut short (the
// copy is stopping) holds the watermark where it is for good: its groups,
// and all after them, are redone by the next run.
type tracker struct {
	mu        sync.Mutex
	next      int64
	done      map[int64]int64
	watermark int64
}

const aborted = -2 // endOff of a task that did not finish

func (t *tracker) complete(seq, endOff int64) {
	t.mu.Lock()
	t.done[seq] = endOff
	for {
		off, ok := t.done[t.next]
		if !ok || off == aborted {
			break
		}
		delete(t.done, t.next)
		t.next++
		if off >= 0 {
			t.watermark = off
		}
	}
	t.mu.Unlock()
}

func (t *tracker) get() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.watermark
}

// CopyPlan copies every group of the plan file from offset from (a
// watermark of an earlier run, or 0). checkpoint, if not nil, is called
// from another goroutine about every `every` with the current watermark,
// and once at the end; an error from it stops the copy. ctr gets groups
// (Done), paths and bytes.
func (c *Copier) CopyPlan(path string, from int64, ctr *progress.Counters, checkpoint func(off int64) error, every time.Duration) error {
	r, err := plan.OpenReader(path, from)
	if err != nil {
		return err
	}
	defer r.Close()
	if ctr == nil {
		ctr = new(progress.Counters)
	}

	tasks := make(chan *task, 2*c.opt.Jobs)
	free := make(chan *task, 4*c.opt.Jobs)
	tr := &tracker{done: make(map[int64]int64), watermark: from}
	var wg sync.WaitGroup
	for i := 0; i < c.opt.Jobs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{c: c, ctr: ctr, data: fsx.DataCopier{Caps: c.caps}}
			for t := range tasks {
				res := w.run(t)
				if t.result != nil {
					t.result <- res
				}
				// A task cut short by a stop has left groups (or links)
				// undone; so may one that ran while the stop came in.
				end := t.endOff
				if c.Fatal() != nil {
					end = aborted
				}
				tr.complete(t.seq, end)
				select {
				case free <- t:
				default:
				}
			}
		}()
	}

	pf := c.newPrefetcher(path, from)
	defer pf.close()
	var seq int64
	newTask := func() *task {
		var t *task
		select {
		case t = <-free:
			t.reset()
		default:
			t = &task{buf: make([]byte, 0, maxTaskBytes+512), endOff: -1}
		}
		t.seq = seq
		seq++
		return t
	}
	send := func(t *task) { tasks <- t }

	var (
		cur        = newTask()
		prev       []byte // first record of the current group
		groupStart int    // index of the current group's first record in cur
		groupLen   int64
		groupOff   = from // plan offset of the current group's first record
		big        *linkTarget
		bigNlink   uint64 // the large group's source st_nlink
		bigFailed  bool
		bigSkipped int64
		bigHead    plan.Entry
		rerr       error
	)
	// Checkpoints run beside the copy: the watermark is taken first, then
	// the checkpoint (syncfs + journal) makes everything below it durable,
	// while the workers go on.
	stopCkpt := make(chan struct{})
	ckptDone := make(chan struct{})
	go func() {
		defer close(ckptDone)
		if every <= 0 || checkpoint == nil {
			return
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stopCkpt:
				return
			case <-t.C:
				if err := checkpoint(tr.get()); err != nil {
					c.setFatal(fmt.Errorf("checkpoint: %w", err))
					return
				}
			}
		}
	}()
	// endBig closes a large group: its last chunk carries the group's end offset.
	endBig := func() {
		if big != nil && bigNlink > uint64(groupLen) {
			c.Stats.OutsideLinks.Add(1)
		}
		if bigSkipped > 0 && c.Fatal() == nil {
			c.fail(bigHead.Dir, bigHead.Name, fmt.Errorf("%d more links of this inode were not created", bigSkipped))
		}
		big, bigFailed, bigSkipped = nil, false, 0
	}
	// linkTask starts a continuation chunk of a large group; all of them
	// share the group's link target.
	linkTask := func() *task {
		t := newTask()
		t.link = big
		return t
	}
	for {
		if c.Fatal() != nil {
			break
		}
		off := r.Offset()
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = fmt.Errorf("read plan: %w", err)
			break
		}
		if prev == nil || !plan.SameInode(prev, rec) {
			// A new group starts: the task so far ends at a group boundary.
			if big != nil || bigFailed {
				cur.endOff = off
				send(cur)
				cur = newTask()
				endBig()
			} else if len(cur.recs) >= maxTaskRecs || len(cur.buf) >= maxTaskBytes {
				cur.endOff = off
				send(cur)
				cur = newTask()
			}
			prev = append(prev[:0], rec...)
			groupStart, groupLen, groupOff = len(cur.recs), 0, off
			pf.advance()
		}
		groupLen++
		if bigFailed {
			bigSkipped++ // the inode could not be made
			continue
		}
		cur.add(rec)
		switch {
		case big == nil && groupLen == bigChunk:
			// This group is large: run its first chunk alone, wait for
			// the inode to exist, then stream the rest in parallel chunks.
			if groupStart > 0 {
				head := newTask()
				for _, r := range cur.recs[groupStart:] {
					head.add(r)
				}
				cur.recs = cur.recs[:groupStart]
				cur.endOff = groupOff
				send(cur)
				cur = head
			}
			if e, err := plan.DecodeEntry(cur.recs[0]); err == nil {
				bigHead = plan.Entry{Dir: e.Dir, Name: append([]byte(nil), e.Name...)}
			}
			cur.result = make(chan *linkTarget, 1)
			res := cur.result
			send(cur)
			big = <-res
			if big == nil {
				bigFailed = true
			} else {
				bigNlink = big.get().nlink
			}
			cur = linkTask()
		case big != nil && len(cur.recs) >= bigChunk:
			send(cur)
			cur = linkTask()
		}
	}
	if rerr == nil && c.Fatal() == nil {
		cur.endOff = r.Offset()
	}
	// Sent even when empty: its end offset is the end of the plan (the
	// last group's chunks may all have gone already).
	if len(cur.recs) > 0 || cur.endOff >= 0 {
		send(cur)
	}
	if big != nil || bigFailed {
		endBig()
	}
	close(tasks)
	wg.Wait()
	pf.close()
	close(stopCkpt)
	<-ckptDone
	if rerr != nil {
		return rerr
	}
	if err := c.Fatal(); err != nil {
		if checkpoint != nil {
			checkpoint(tr.get())
		}
		return err
	}
	if checkpoint != nil {
		return checkpoint(tr.get())
	}
	return nil
}

type worker struct {
	c    *Copier
	ctr  *progress.Counters
	data fsx.DataCopier
	x    fsx.Xattrs
	lbuf []byte
}

// run does one task and returns the link target of its last group.
func (w *worker) run(t *task) *linkTarget {
	if t.link != nil {
		w.linkAll(t.link, t.recs)
		return t.link
	}
	var last *linkTarget
	for i := 0; i < len(t.recs); {
		j := i + 1
		for j < len(t.recs) && plan.SameInode(t.recs[i], t.recs[j]) {
			j++
		}
		e, err := plan.DecodeEntry(t.recs[i])
		if err != nil {
			w.c.setFatal(err)
			return nil
		}
		last = nil
		if ls := w.create(e, e.Dir, e.Name); ls != nil {
			w.c.Stats.Groups.Add(1)
			w.ctr.Done.Add(1)
			last = &linkTarget{ls: *ls}
			w.linkAll(last, t.recs[i+1:j])
			if t.result == nil && ls.nlink > uint64(j-i) {
				w.c.Stats.OutsideLinks.Add(1)
			}
		} else if w.c.Fatal() != nil {
			return nil // stopping: the rest is redone from the checkpoint
		} else if j-i > 1 {
			w.c.fail(e.Dir, e.Name, fmt.Errorf("%d other links of this inode were not created", j-i-1))
		}
		i = j
	}
	return last
}

func (w *worker) linkAll(tgt *linkTarget, recs [][]byte) {
	if tgt == nil {
		return
	}
	c := w.c
	for _, rec := range recs {
		if c.Fatal() != nil {
			return
		}
		e, err := plan.DecodeEntry(rec)
		if err != nil {
			c.setFatal(err)
			return
		}
		for done := false; !done; {
			ls := tgt.get()
			if c.noLinks.Load() {
				w.extraCopy(&ls, e)
				break
			}
			err = w.link(&ls, e)
			done = true
			switch {
			case err == nil:
				c.Stats.Paths.Add(1)
				c.Stats.Links.Add(1)
				w.ctr.Paths.Add(1)
			case errors.Is(err, unix.EMLINK):
				// The inode is full: copy it again here and link the
				// rest of the group to the new copy, unless another
				// chunk of the group has just done so: then link to
				// its copy.
				done = w.moveTarget(tgt, &ls, e)
			case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS):
				if !c.noLinks.Swap(true) {
					c.opt.OnWarn("nolinks", fmt.Sprintf("the destination does not support hard links (%v): every path gets its own copy of the data", err))
				}
				w.extraCopy(&ls, e)
			default:
				c.fail(e.Dir, e.Name, fmt.Errorf("link to %s: %w", c.dirs.Rel(ls.dir, ls.name), err))
			}
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
	nls := w.create(ls.src, e.Dir, e.Name)
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
// source path src (whose scan gave its dev, ino and type). It returns nil
// after reporting an error.
func (w *worker) create(src plan.Entry, dir uint32, name []byte) *linkSrc {
	c := w.c
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
		err = w.copyFile(spfd, dpfd, src, string(name), &st)
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
			return nil
		}
	}
	c.Stats.Paths.Add(1)
	w.ctr.Paths.Add(1)
	return &linkSrc{dir: dir, name: append([]byte(nil), name...), src: plan.Entry{Dev: src.Dev, Ino: src.Ino, Dir: src.Dir, Type: src.Type, Name: append([]byte(nil), src.Name...)}, nlink: uint64(st.Nlink), size: st.Size}
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
func createFile(dpfd int, name string) (int, error) {
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dpfd, name, flags, 0o600)
	if errors.Is(err, unix.EEXIST) {
		if err := unix.Unlinkat(dpfd, name, 0); err != nil {
			return -1, fmt.Errorf("replace existing: %w", err)
		}
		fd, err = unix.Openat(dpfd, name, flags, 0o600)
	}
	return fd, err
}

func (w *worker) copyFile(spfd, dpfd int, src plan.Entry, name string, st *unix.Stat_t) error {
	c := w.c
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
	sname := string(src.Name)
	var sfd int
	var err error
	noAtime := !c.noAtime.Load()
	if noAtime {
		sfd, err = unix.Openat(spfd, sname, flags|unix.O_NOATIME, 0)
		if errors.Is(err, unix.EPERM) {
			c.noAtime.Store(true) // not the owner: no O_NOATIME from now on
			noAtime = false
		}
	}
	if !noAtime {
		sfd, err = unix.Openat(spfd, sname, flags, 0)
	}
	if err != nil {
		return fmt.Errorf("open: %w", vanished(err))
	}
	defer unix.Close(sfd)
	if err := unix.Fstat(sfd, st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if err := checkInode(st, src, w.c.opt.SrcDevMap); err != nil {
		return err
	}
	var changed bool
	first := *st // the state the scan-time identity check saw
	for attempt := 0; ; attempt++ {
		dfd, err := createFile(dpfd, name)
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
// security.capability, chmod must follow it, and times come last).
func (w *worker) setMeta(dfd, sfd int, st *unix.Stat_t, src plan.Entry) {
	c := w.c
	if c.opt.Owner {
		if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
			c.metaFail(src.Dir, src.Name, "chown", err)
		}
	} else {
		c.ownerWarn(st.Uid, st.Gid)
	}
	if err := w.x.CopyFd(sfd, dfd, c.xattrErr); err != nil {
		c.fail(src.Dir, src.Name, err)
	}
	if err := unix.Fchmod(dfd, st.Mode&07777); err != nil {
		c.metaFail(src.Dir, src.Name, "chmod", err)
	}
	if err := futimens(dfd, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
		c.fail(src.Dir, src.Name, fmt.Errorf("set times: %w", err))
	}
}

// setMetaAt is setMeta for entries that cannot be opened (symlinks, device
// nodes, fifos, sockets): by name relative to their directory, never
// following a symlink.
func (w *worker) setMetaAt(spfd, dpfd int, name string, st *unix.Stat_t, src plan.Entry) {
	c := w.c
	if c.opt.Owner {
		if err := unix.Fchownat(dpfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			c.metaFail(src.Dir, src.Name, "chown", err)
		}
	} else {
		c.ownerWarn(st.Uid, st.Gid)
	}
	if err := w.x.CopyPath(fsx.ProcPath(spfd, string(src.Name)), fsx.ProcPath(dpfd, name), c.xattrErr); err != nil {
		c.fail(src.Dir, src.Name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		err := unix.Fchmodat(dpfd, name, st.Mode&07777, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.EOPNOTSUPP) {
			err = chmodNoFollow(dpfd, name, st.Mode&07777)
		}
		if err != nil {
			c.metaFail(src.Dir, src.Name, "chmod", err)
		}
	}
	if err := unix.UtimesNanoAt(dpfd, name, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
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
	size := int(st.Size) + 1
	if size < 256 {
		size = 256
	}
	for {
		if cap(w.lbuf) < size {
			w.lbuf = make([]byte, size)
		}
		n, err := unix.Readlinkat(spfd, sname, w.lbuf[:size])
		if err != nil {
			return fmt.Errorf("readlink: %w", vanished(err))
		}
		if n < size {
			w.lbuf = w.lbuf[:n]
			break
		}
		size *= 2
	}
	target := string(w.lbuf)
	err := unix.Symlinkat(target, dpfd, name)
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
