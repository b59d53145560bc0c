package copier

import (
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sync/errgroup"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
)

// Input is the plan to copy: the plan file and the link file (plan.PlanFile,
// plan.LinksFile) in Dir, as they were written.
type Input struct {
	Dir         *fsx.Dir
	Plan, Links blockfile.Info
}

// Copy copies the plan: it creates each group's inode at its first path,
// in inode order (the plan file), and makes the group's other paths as
// links (the link file, sorted by chunk of groups, then by destination
// directory). Both go on at once: the links of a chunk are made as soon
// as the chunk's inodes exist, by the same workers, while the creates go
// on with the next chunks. from is where an earlier run stopped (or zero).
// checkpoint, if not nil, is called from another goroutine about every
// `every` with the current marks, and once at the end; an error from it
// stops the copy. When the copier's context ends (a signal) or a fatal
// error stops it, Copy checkpoints what is done and returns why it
// stopped. ctr gets groups (Done), paths and bytes.
func (c *Copier) Copy(in Input, from Marks, ctr *progress.Counters, checkpoint func(Marks) error, every time.Duration) error {
	r, err := c.openRun(in, from, ctr)
	if err != nil {
		return err
	}
	defer r.close()
	r.startWorkers()
	r.startCheckpoints(checkpoint, every)
	r.startCreates()
	linkErr := r.dispatchLinks()
	createErr := r.stopCreates()
	r.stopWorkers()
	r.stopCheckpoints()
	if err := errors.Join(linkErr, createErr); err != nil {
		return err
	}
	if checkpoint == nil {
		return c.Fatal()
	}
	if err := c.Fatal(); err != nil {
		checkpoint(r.marks())
		return err
	}
	return checkpoint(r.marks())
}

// copyRun is one Copy: its two readers, its two queues of tasks, the
// pools they are drawn from, the trackers that turn completed tasks into
// marks, and the goroutines that feed and drain them, started and stopped
// in named pairs.
type copyRun struct {
	c      *Copier
	ctr    *progress.Counters
	from   Marks
	pr, lr *plan.Reader
	// Two queues. Creates wait on the disks (and the prefetcher keeps the
	// source busy ahead of them), links only on the CPU and the
	// destination's journal. Half the workers (at least one) take link
	// tasks first, the others create tasks first; each takes the other
	// kind when its own has none waiting. A link task waiting behind
	// create tasks would leave the links of finished chunks to the end of
	// the copy, after the data; with every worker taking links first, the
	// disks stood idle while a chunk's links were made (on a 10M-path
	// tree the copy alternated between data at 400 MiB/s and links at
	// 0 B/s).
	tasks, ltasks chan *task
	pool          *taskPool
	pf            *prefetcher
	ct, lt        *tracker // creates (plan offsets), links (link file offsets)
	workers       errgroup.Group
	creates       errgroup.Group // the create dispatcher
	ckptStop      chan struct{}
	ckptDone      chan struct{}
}

func (c *Copier) openRun(in Input, from Marks, ctr *progress.Counters) (*copyRun, error) {
	pr, err := plan.OpenReader(in.Dir, plan.PlanFile, in.Plan, from.Plan)
	if err != nil {
		return nil, err
	}
	lr, err := plan.OpenReader(in.Dir, plan.LinksFile, in.Links, from.Links)
	if err != nil {
		pr.Close()
		return nil, err
	}
	if ctr == nil {
		ctr = new(progress.Counters)
	}
	r := &copyRun{c: c, ctr: ctr, from: from, pr: pr, lr: lr,
		tasks: make(chan *task, 2*c.opt.Jobs), ltasks: make(chan *task, c.opt.Jobs),
		pool: newTaskPool(c.opt.Jobs),
		ct:   newTracker(from.Plan, from.Groups), lt: newTracker(from.Links, 0)}
	r.pf = c.newPrefetcher(r.tasks)
	return r, nil
}

func (r *copyRun) close() {
	r.pr.Close()
	r.lr.Close()
}

// marks reads where the copy stands. The link mark is read before the
// create mark: a link below it was sent only once its chunk's inodes were
// below the create watermark, which only grows, so the create mark read
// after it covers them. Read the other way round, a link completing in
// between could be recorded as done while its inode's create is not, and
// a resume would recreate that inode under the links already made to the
// old one.
func (r *copyRun) marks() Marks {
	loff, _ := r.lt.get()
	off, groups := r.ct.get()
	return Marks{Plan: off, Groups: groups, Links: loff}
}

// startWorkers starts the pool of workers; stopWorkers waits for them
// once both queues are closed.
func (r *copyRun) startWorkers() {
	c := r.c
	linkFirst := max(1, c.opt.Jobs/2)
	for i := 0; i < c.opt.Jobs; i++ {
		first, second := r.ltasks, r.tasks
		if i >= linkFirst {
			first, second = r.tasks, r.ltasks
		}
		r.workers.Go(func() error {
			w := c.newWorker(r.ctr, r.pf)
			defer w.close()
			for {
				t := nextTask(&first, &second)
				if t == nil {
					return nil
				}
				r.do(w, t)
			}
		})
	}
}

// do runs one task on worker w and records its completion.
func (r *copyRun) do(w *worker, t *task) {
	tr := r.ct
	if t.links {
		tr = r.lt
		w.linkTask(t)
	} else {
		w.createTask(t)
	}
	// A task cut short by a stop has left records undone; so may one that
	// ran while the stop came in.
	end := t.endOff
	if r.c.stopping() {
		end = aborted
	}
	tr.complete(t.seq, end, int64(len(t.counts)))
	r.pool.put(t)
}

func (r *copyRun) stopWorkers() {
	close(r.tasks)
	r.workers.Wait()
}

// startCheckpoints runs the checkpoints beside the copy: the marks are
// taken first, then the checkpoint (syncfs + journal) makes everything
// below them durable, while the workers go on. The ticker also wakes the
// link dispatcher now and then, so that it sees a stop even when nothing
// completes.
func (r *copyRun) startCheckpoints(checkpoint func(Marks) error, every time.Duration) {
	r.ckptStop, r.ckptDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(r.ckptDone)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-r.ckptStop:
				return
			case <-tick.C:
				r.ct.cond.Broadcast()
				if every <= 0 || checkpoint == nil || time.Since(last) < every {
					continue
				}
				last = time.Now()
				if err := checkpoint(r.marks()); err != nil {
					r.c.setFatal(fmt.Errorf("checkpoint: %w", err))
					return
				}
			}
		}
	}()
}

func (r *copyRun) stopCheckpoints() {
	close(r.ckptStop)
	<-r.ckptDone
}

// startCreates starts the create dispatcher: the first path of each
// group, in plan order, in tasks of whole groups, through the prefetcher
// to the workers. stopCreates waits for it and returns its error.
func (r *copyRun) startCreates() {
	r.creates.Go(func() error {
		sent, err := r.sendCreates()
		r.ct.close(sent)
		return err
	})
}

func (r *copyRun) stopCreates() error { return r.creates.Wait() }

// sendCreates reads the plan into create tasks and sends them, and returns
// how many it sent.
func (r *copyRun) sendCreates() (sent int64, err error) {
	c, pr := r.c, r.pr
	var seq int64
	group := r.from.Groups
	cur := r.pool.get(false, &seq)
	cur.group = group
	var prev []byte
	for !c.stopping() {
		off := pr.Offset()
		rec, rerr := pr.Next()
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = fmt.Errorf("read plan: %w", rerr)
			c.setFatal(err)
			break
		}
		if prev != nil && plan.SameInode(prev, rec) {
			cur.counts[len(cur.counts)-1]++
			continue
		}
		// A new group starts: the task so far ends at a group boundary.
		if len(cur.recs) >= maxCreateRecs || len(cur.buf) >= maxTaskBytes {
			cur.endOff = off
			r.pf.in <- cur
			cur = r.pool.get(false, &seq)
			cur.group = group
		}
		group++
		prev = append(prev[:0], rec...)
		cur.add(rec)
		cur.counts = append(cur.counts, 1)
		cur.fds = append(cur.fds, -1)
	}
	if !c.stopping() {
		cur.endOff = pr.Offset()
	}
	// Sent even when empty: its end offset is the end of the plan.
	if len(cur.recs) > 0 || cur.endOff >= 0 {
		r.pf.in <- cur
	} else {
		seq-- // not sent
	}
	if r.pf.in != r.tasks {
		close(r.pf.in)
		r.pf.wait()
	}
	return seq, err
}

// ready waits until the inodes of the chunk exist; false means the copy
// is stopping.
func (r *copyRun) ready(chunk uint32) bool {
	ct := r.ct
	ct.mu.Lock()
	defer ct.mu.Unlock()
	for !ct.finished && ct.groups < int64(chunk+1)*plan.ChunkGroups {
		if r.c.stopping() {
			return false
		}
		ct.cond.Wait()
	}
	return !r.c.stopping()
}

// dispatchLinks reads the link file into link tasks, a chunk at a time
// once the chunk's inodes exist, cut where the destination directory
// changes, and closes the link queue at the end.
func (r *copyRun) dispatchLinks() error {
	c, lr := r.c, r.lr
	defer close(r.ltasks)
	var lerr error
	var lseq int64
	cur := r.pool.get(true, &lseq)
	var dir uint32
	readyChunk := int64(-1)
	for !c.stopping() {
		off := lr.Offset()
		rec, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			lerr = fmt.Errorf("read links: %w", err)
			c.setFatal(lerr)
			break
		}
		chunk, d := plan.LinkKey(rec)
		if int64(chunk) > readyChunk {
			if len(cur.recs) > 0 {
				cur.endOff = off
				r.ltasks <- cur
				cur = r.pool.get(true, &lseq)
			}
			if !r.ready(chunk) {
				break
			}
			readyChunk = int64(chunk)
		} else if len(cur.recs) >= maxLinkTask || len(cur.buf) >= maxLinkBytes || (d != dir && len(cur.recs) >= minLinkTask) {
			cur.endOff = off
			r.ltasks <- cur
			cur = r.pool.get(true, &lseq)
		}
		dir = d
		cur.add(rec)
	}
	if lerr == nil && !c.stopping() {
		cur.endOff = lr.Offset()
	}
	if len(cur.recs) > 0 || cur.endOff >= 0 {
		r.ltasks <- cur
	}
	return lerr
}
