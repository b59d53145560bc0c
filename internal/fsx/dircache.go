package fsx

import (
	"fmt"
	"hlcp/internal/msg"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Resolver gives a directory's parent id and its name in the parent.
type Resolver func(id uint32) (parent uint32, name string, err error)

// DirCache hands out fds of the directories of one tree, by directory id,
// opening each one relative to its parent's fd with O_NOFOLLOW|O_DIRECTORY:
// no path is ever resolved by the kernel as a whole, so a symlink planted in
// the tree cannot redirect anything, and paths longer than PATH_MAX work.
// At most about Cap fds stay open; least recently used ones are closed when
// nobody holds them. Id 0 is the tree's root and its fd is given.
type DirCache struct {
	resolve Resolver
	flags   int
	cap     int

	mu   sync.Mutex
	m    map[uint32]*centry
	head centry // LRU ring: head.next is most recent
	// Opens counts directory opens (cache misses), for statistics.
	Opens int64
}

type centry struct {
	id         uint32
	fd         int
	refs       int
	prev, next *centry
	opening    chan struct{} // closed once fd (or err) is set; nil after
	err        error         // the open's error, for those that waited
}

// NewDirCache returns a cache over the tree whose root is rootFd. flags are
// added to O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC when opening (O_PATH for fds that
// only serve as *at() anchors, O_RDONLY to read them). The root fd is not
// closed by Close.
func NewDirCache(rootFd int, resolve Resolver, flags int, capacity int) *DirCache {
	if capacity < 2 {
		capacity = 2
	}
	c := &DirCache{resolve: resolve, flags: flags | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC, cap: capacity, m: make(map[uint32]*centry)}
	c.head.prev, c.head.next = &c.head, &c.head
	root := &centry{id: 0, fd: rootFd, refs: 1 << 30} // never evicted
	c.m[0] = root
	return c
}

func (c *DirCache) unlink(e *centry) {
	e.prev.next = e.next
	e.next.prev = e.prev
}

func (c *DirCache) pushFront(e *centry) {
	e.prev = &c.head
	e.next = c.head.next
	c.head.next.prev = e
	c.head.next = e
}

// Acquire returns an fd of directory id; call Release(id) when done with it.
// Concurrent misses on one directory open it once: the first opens it, the
// others wait for it (workers that take consecutive tasks all need the
// same new directory at the same moment).
func (c *DirCache) Acquire(id uint32) (int, error) {
	c.mu.Lock()
	if e, ok := c.m[id]; ok {
		e.refs++
		if e.prev != nil {
			c.unlink(e)
			c.pushFront(e)
		}
		if e.opening != nil {
			ch := e.opening
			c.mu.Unlock()
			<-ch
			c.mu.Lock()
			fd, err := e.fd, e.err
			if err != nil {
				e.refs--
			}
			c.mu.Unlock()
			return fd, err
		}
		c.mu.Unlock()
		return e.fd, nil
	}
	// Take the directory's place, so that others wait for this open.
	e := &centry{id: id, fd: -1, refs: 1, opening: make(chan struct{})}
	c.m[id] = e
	c.pushFront(e)
	c.mu.Unlock()

	fd, err := c.open(id)

	c.mu.Lock()
	defer c.mu.Unlock()
	e.fd, e.err = fd, err
	close(e.opening)
	e.opening = nil
	if err != nil {
		// Waiters see the error; the entry goes, so a later Acquire
		// tries again.
		e.refs--
		c.unlink(e)
		delete(c.m, id)
		return -1, err
	}
	c.Opens++
	c.evict()
	return fd, nil
}

// open opens directory id relative to its parent.
func (c *DirCache) open(id uint32) (int, error) {
	parent, name, err := c.resolve(id)
	if err != nil {
		return -1, err
	}
	if parent == id {
		return -1, fmt.Errorf("directory %d is its own parent", id)
	}
	pfd, err := c.Acquire(parent)
	if err != nil {
		return -1, err
	}
	fd, err := OpenBeneath(pfd, name, c.flags)
	c.Release(parent)
	return fd, err
}

// Release gives back an fd obtained from Acquire.
func (c *DirCache) Release(id uint32) {
	c.mu.Lock()
	if e, ok := c.m[id]; ok {
		e.refs--
	}
	c.evict()
	c.mu.Unlock()
}

// Forget closes and drops the cached fd of id (after the directory was
// removed or renamed), once nobody holds it.
func (c *DirCache) Forget(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[id]; ok && id != 0 && e.refs == 0 {
		c.unlink(e)
		delete(c.m, id)
		unix.Close(e.fd)
	}
}

func (c *DirCache) evict() {
	for len(c.m) > c.cap {
		e := c.head.prev
		for e != &c.head && e.refs > 0 {
			e = e.prev
		}
		if e == &c.head {
			return // everything is in use
		}
		c.unlink(e)
		delete(c.m, e.id)
		unix.Close(e.fd)
	}
}

// Close closes every cached fd except the root's.
func (c *DirCache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.m {
		if id != 0 {
			unix.Close(e.fd)
		}
	}
	c.m = map[uint32]*centry{0: c.m[0]}
	c.head.prev, c.head.next = &c.head, &c.head
}

// RaiseFileLimit raises the open-file limit to want fds when the hard
// limit allows it or the process may raise the hard limit (root, up to
// fs.nr_open). A directory cache that holds every directory of the tree
// opens each one once; one that is too small reopens them over and over
// (a tree walked in inode order, or in chunks, visits its directories
// many times). It returns the limit in force.
func RaiseFileLimit(want uint64) uint64 {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	if r.Cur >= want {
		return r.Cur
	}
	if want > r.Max {
		max := want
		if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
			if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n < max {
				max = n
			}
		}
		if max > r.Max {
			nr := unix.Rlimit{Cur: max, Max: max}
			if unix.Setrlimit(unix.RLIMIT_NOFILE, &nr) == nil {
				return max
			}
		}
		want = r.Max
	}
	nr := unix.Rlimit{Cur: want, Max: r.Max}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &nr) == nil {
		return want
	}
	return r.Cur
}

var noOpenat2 atomic.Bool

// OpenBeneath opens name (one path component) relative to dirfd with flags,
// never through a symlink: with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
// RESOLVE_NO_MAGICLINKS) where the kernel has it, else with openat and
// O_NOFOLLOW (which, for a single component, refuses a symlink just as
// well). A name with a '/' or a ".." is refused.
func OpenBeneath(dirfd int, name string, flags int) (int, error) {
	if name == "" || name == "." || name == ".." || strings.IndexByte(name, '/') >= 0 {
		return -1, fmt.Errorf("bad path component %s: %w", msg.Quote(name), unix.EINVAL)
	}
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !noOpenat2.Load() {
		how := unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		for {
			fd, err := unix.Openat2(dirfd, name, &how)
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			if err == unix.ENOSYS || err == unix.EPERM && fd < 0 && seccompBlocked(dirfd) {
				noOpenat2.Store(true)
				break
			}
			return fd, err
		}
	}
	return unix.Openat(dirfd, name, flags, 0)
}

// seccompBlocked tells a seccomp filter that refuses openat2 with EPERM
// from a real EPERM: it tries openat2 on ".", which a real permission
// check allows.
func seccompBlocked(dirfd int) bool {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC}
	fd, err := unix.Openat2(dirfd, ".", &how)
	if err == nil {
		unix.Close(fd)
		return false
	}
	return err == unix.EPERM || err == unix.ENOSYS
}
