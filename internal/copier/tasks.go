package copier

import (
	"sync"
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

// taskPool reuses tasks, each kind in its own pool, so that a create task
// does not carry a link task's larger buffer; it also numbers them.
type taskPool struct {
	free, lfree chan *task
	mu          sync.Mutex
}

func newTaskPool(jobs int) *taskPool {
	return &taskPool{
		free:  make(chan *task, 4*jobs+prefetchQueue+prefetchWorkers),
		lfree: make(chan *task, 2*jobs+1),
	}
}

func (p *taskPool) of(links bool) chan *task {
	if links {
		return p.lfree
	}
	return p.free
}

// get takes a task of the kind from the pool (or makes one), numbered
// *seq, which it advances.
func (p *taskPool) get(links bool, seq *int64) *task {
	var t *task
	size := createTaskBuf
	if links {
		size = maxLinkBytes + 512
	}
	select {
	case t = <-p.of(links):
		t.reset()
	default:
		t = &task{buf: make([]byte, 0, size), endOff: -1}
	}
	p.mu.Lock()
	t.seq = *seq
	*seq++
	p.mu.Unlock()
	t.links = links
	return t
}

// put gives a completed task back (or drops it when the pool is full).
func (p *taskPool) put(t *task) {
	select {
	case p.of(t.links) <- t:
	default:
	}
}
