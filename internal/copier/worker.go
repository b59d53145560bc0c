package copier

import (
	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
	"hlcp/internal/progress"
)

// worker is one of the copy's workers: it takes create and link tasks
// and owns the buffers, xattr scratch and io_uring they need.
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

// newWorker makes a worker with its own io_uring for links where the
// kernel has one (and NoRing is off).
func (c *Copier) newWorker(ctr *progress.Counters, pf *prefetcher) *worker {
	w := &worker{c: c, ctr: ctr, data: fsx.DataCopier{Caps: c.caps, NoDirect: c.opt.NoDirect}, pf: pf}
	if !c.opt.NoRing {
		if r, err := fsx.NewRing(ringSize); err == nil {
			w.ring = r
		}
	}
	return w
}

// close releases the worker's ring.
func (w *worker) close() {
	if w.ring != nil {
		w.ring.Close()
	}
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
		if c.stopping() {
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
		} else if c.stopping() {
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
