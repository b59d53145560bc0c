package copier

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"hlcp/internal/budget"
	"hlcp/internal/fsx"
	"hlcp/internal/plan"
)

// The copy reads each source file once, in inode order, but a worker
// reads one file at a time and waits for the disk on each: on a cold
// cache the workers alone keep only a few reads in flight. So create
// tasks pass through a prefetch stage on their way from the dispatcher to
// the workers: prefetchWorkers goroutines open each regular file of a
// task and ask the kernel to read it in the background
// (posix_fadvise WILLNEED). The disk then sees a deep queue of reads in
// nearly the order of the data on it, and the workers find the data (and
// the inodes) in the page cache. The open fd travels with the task, so a
// file is opened once, not once to prefetch and once to copy; the number
// of such fds is bounded (prefetchFds) and a file past the bound is
// opened by its worker as usual.
const (
	prefetchWorkers = 8
	prefetchQueue   = 16 // create tasks waiting for the prefetch stage
)

type prefetcher struct {
	c   *Copier
	in  chan *task
	out chan<- *task
	wg  sync.WaitGroup
	// fds is the number of prefetched fds not yet closed; max its bound.
	fds atomic.Int64
	max int64
}

// newPrefetcher starts the prefetch stage in front of out; send create
// tasks to p.in and close it after the last one. With prefetching off,
// p.in is out itself.
func (c *Copier) newPrefetcher(out chan *task) *prefetcher {
	p := &prefetcher{c: c, out: out, max: budget.PrefetchFds()}
	if c.opt.NoPrefetch || p.max == 0 {
		p.in = out
		return p
	}
	p.in = make(chan *task, prefetchQueue)
	for i := 0; i < prefetchWorkers; i++ {
		p.wg.Add(1)
		go p.fetch()
	}
	return p
}

// wait returns once every task sent to p.in is on its way to the workers.
func (p *prefetcher) wait() { p.wg.Wait() }

func (p *prefetcher) fetch() {
	defer p.wg.Done()
	for t := range p.in {
		p.open(t)
		p.out <- t
	}
}

// open opens the regular files of create task t, as far as the fd bound
// allows, and starts reading them.
func (p *prefetcher) open(t *task) {
	c := p.c
	for i, rec := range t.recs {
		if c.stopping() || p.fds.Load() >= p.max {
			return
		}
		e, err := plan.DecodeEntry(rec)
		if err != nil || e.Type != fsx.TypeReg {
			continue
		}
		pfd, err := c.srcDirs.Acquire(e.Dir)
		if err != nil {
			continue
		}
		fd, err := c.openSource(pfd, e.Name)
		c.srcDirs.Release(e.Dir)
		if err != nil {
			continue // the worker tries again and reports it
		}
		p.fds.Add(1)
		// No fstat here: the worker checks what it got. WILLNEED on
		// anything but a regular file is refused harmlessly.
		unix.Fadvise(fd, 0, 0, unix.FADV_WILLNEED)
		t.fds[i] = int32(fd)
	}
}

// taken says that a worker has taken over (and will close) n prefetched
// fds.
func (p *prefetcher) taken(n int) {
	if n > 0 {
		p.fds.Add(int64(-n))
	}
}

// openSource opens a source file for reading, with O_NOATIME while the
// source's owner lets us.
func (c *Copier) openSource(pfd int, name []byte) (int, error) {
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
	if !c.noAtime.Load() {
		fd, err := unix.Openat(pfd, string(name), flags|unix.O_NOATIME, 0)
		if err != unix.EPERM {
			return fd, err
		}
		c.noAtime.Store(true) // not the owner: no O_NOATIME from now on
	}
	return unix.Openat(pfd, string(name), flags, 0)
}
