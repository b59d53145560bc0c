package mirror

import (
	"bytes"
	"container/list"
	"errors"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
)

// dirs is a small cache of one tree's directories, opened by their paths
// relative to the root, one component at a time and never through a
// symlink (fsx.OpenBeneath), with O_PATH: the mirror's passes go in path
// order or source-inode order, and reuse what they opened last. It holds
// at most max fds.
type dirs struct {
	root int
	max  int
	m    map[string]*list.Element
	lru  *list.List // of *dirEnt, most recent first
}

type dirEnt struct {
	path string
	fd   int
}

func newDirs(root, max int) *dirs {
	return &dirs{root: root, max: max, m: make(map[string]*list.Element), lru: list.New()}
}

// split cuts a relative path into its directory ("" for the root) and its
// name.
func split(path []byte) (dir, name string) {
	if i := bytes.LastIndexByte(path, '/'); i >= 0 {
		return string(path[:i]), string(path[i+1:])
	}
	return "", string(path)
}

// get returns an O_PATH fd of directory path (owned by the cache: valid
// until the next get or forget).
func (d *dirs) get(path string) (int, error) {
	if path == "" {
		return d.root, nil
	}
	if e, ok := d.m[path]; ok {
		d.lru.MoveToFront(e)
		return e.Value.(*dirEnt).fd, nil
	}
	parent, name := split([]byte(path))
	pfd, err := d.get(parent)
	if err != nil {
		return -1, err
	}
	fd, err := fsx.OpenBeneath(pfd, name, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, err
	}
	for d.lru.Len() >= d.max {
		last := d.lru.Back()
		ent := last.Value.(*dirEnt)
		unix.Close(ent.fd)
		delete(d.m, ent.path)
		d.lru.Remove(last)
	}
	d.m[path] = d.lru.PushFront(&dirEnt{path: path, fd: fd})
	return fd, nil
}

// parent returns the fd of path's directory and path's name in it.
func (d *dirs) parent(path []byte) (int, string, error) {
	dir, name := split(path)
	fd, err := d.get(dir)
	return fd, name, err
}

// forget drops path and everything below it (it was renamed or deleted).
// A large cache keeps only path's ancestors (whose fds the caller may be
// using): looking for what is below path would cost a walk of the cache
// per directory deleted, and dropping the rest is paid once per entry
// cached.
func (d *dirs) forget(path string) {
	big := len(d.m) > 4096
	for p, e := range d.m {
		below := p == path || len(p) > len(path) && p[:len(path)] == path && p[len(path)] == '/'
		ancestor := len(path) > len(p) && path[:len(p)] == p && path[len(p)] == '/'
		if below || big && !ancestor {
			unix.Close(e.Value.(*dirEnt).fd)
			d.lru.Remove(e)
			delete(d.m, p)
		}
	}
}

func (d *dirs) close() {
	for _, e := range d.m {
		unix.Close(e.Value.(*dirEnt).fd)
	}
	d.m = nil
}

// openDir opens directory path for reading (its metadata, its entries).
func (d *dirs) openDir(path []byte) (int, error) {
	if len(path) == 0 {
		return unix.Openat(d.root, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	pfd, name, err := d.parent(path)
	if err != nil {
		return -1, err
	}
	return fsx.OpenBeneath(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY)
}

var errNotDir = errors.New("not a directory")
