package copier

import (
	"io"
	"sync"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
)

// The copy reads each source file once, in inode order, but a worker
// reads one file at a time and waits for the disk on each: on a cold
// cache the workers alone keep only a few reads in flight. The prefetcher
// reads the plan on its own, up to prefetchWindow groups ahead of the
// copy, and asks the kernel to read each group's first file in the
// background (posix_fadvise WILLNEED). The disk then sees a deep queue of
// reads in nearly the order of the data on it, and the workers find the
// data (and the inodes) in the page cache.
const (
	prefetchWorkers = 8
	prefetchWindow  = 2048 // groups ahead of the copy
)

type prefetcher struct {
	c       *Copier
	ch      chan prefetchItem
	wg      sync.WaitGroup
	window  chan struct{} // a token per group read ahead; the copy returns them
	stop    chan struct{}
	once    sync.Once
	enabled bool
}

type prefetchItem struct {
	dir  uint32
	name string
}

// newPrefetcher starts prefetching the plan at path from offset from.
func (c *Copier) newPrefetcher(path string, from int64) *prefetcher {
	p := &prefetcher{c: c, ch: make(chan prefetchItem, 256), window: make(chan struct{}, prefetchWindow), stop: make(chan struct{}), enabled: !c.opt.NoPrefetch}
	if !p.enabled {
		return p
	}
	r, err := plan.OpenReader(path, from)
	if err != nil {
		p.enabled = false
		return p
	}
	for i := 0; i < prefetchWorkers; i++ {
		p.wg.Add(1)
		go p.fetch()
	}
	p.wg.Add(1)
	go p.read(r)
	return p
}

// advance tells the prefetcher the copy has reached one more group.
func (p *prefetcher) advance() {
	if p.enabled {
		select {
		case <-p.window:
		default: // the prefetcher is behind the copy
		}
	}
}

func (p *prefetcher) close() {
	if !p.enabled {
		return
	}
	p.once.Do(func() {
		close(p.stop)
		p.wg.Wait()
	})
}

// read walks the plan and hands the first path of each regular-file group
// to the fetchers, staying at most prefetchWindow groups ahead.
func (p *prefetcher) read(r *plan.Reader) {
	defer p.wg.Done()
	defer close(p.ch)
	defer r.Close()
	var prev []byte
	for {
		rec, err := r.Next()
		if err == io.EOF || err != nil {
			return
		}
		if prev != nil && plan.SameInode(prev, rec) {
			continue
		}
		prev = append(prev[:0], rec...)
		select {
		case p.window <- struct{}{}:
		case <-p.stop:
			return
		}
		e, err := plan.DecodeEntry(rec)
		if err != nil || e.Type != fsx.TypeReg {
			continue
		}
		select {
		case p.ch <- prefetchItem{dir: e.Dir, name: string(e.Name)}:
		case <-p.stop:
			return
		}
	}
}

func (p *prefetcher) fetch() {
	defer p.wg.Done()
	c := p.c
	for it := range p.ch {
		if c.Fatal() != nil {
			continue // drain
		}
		pfd, err := c.srcDirs.Acquire(it.dir)
		if err != nil {
			continue
		}
		fd, err := fsx.OpenNoAtime(pfd, it.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
		c.srcDirs.Release(it.dir)
		if err != nil {
			continue
		}
		// No fstat: the copy checks what it opens; WILLNEED on anything
		// but a regular file is refused harmlessly (ESPIPE, EINVAL).
		unix.Fadvise(fd, 0, 0, unix.FADV_WILLNEED)
		unix.Close(fd)
	}
}
