package fsx

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sys/unix"
)

// Method says how a file's data was copied.
type Method uint8

const (
	MethodNone      Method = iota // nothing to copy (empty file)
	MethodClone                   // FICLONE reflink: no data moved
	MethodCopyRange               // copy_file_range, in the kernel
	MethodReadWrite               // pread/pwrite through a user buffer
	MethodSendfile                // sendfile: in the kernel, across filesystems
	MethodDirect                  // the source's pages written with O_DIRECT, across filesystems
)

func (m Method) String() string {
	return [...]string{"none", "reflink", "copy_file_range", "read/write", "sendfile", "direct"}[m]
}

// Capability answers of a (source device, destination device) pair.
const (
	capUnknown int32 = iota
	capYes
	capNo
)

type devPair struct{ src, dst uint64 }

type caps struct{ clone, cfr, sendfile, direct int32 }

// DataCopier copies file contents. One per worker (it owns a buffer); the
// knowledge of what a pair of filesystems supports is shared through Caps.
type DataCopier struct {
	Caps *Caps
	// NoDirect turns copyDirect off (sendfile instead).
	NoDirect bool
	buf      []byte
}

// Caps remembers, per pair of devices, whether reflink and copy_file_range
// work, so that a failing method costs one syscall per pair, not per file.
type Caps struct {
	mu sync.Mutex
	m  map[devPair]caps
}

// NewCaps returns an empty capability cache.
func NewCaps() *Caps { return &Caps{m: make(map[devPair]caps)} }

func (c *Caps) get(p devPair) caps {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[p]
}

func (c *Caps) set(p devPair, f func(*caps)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.m[p]
	f(&v)
	c.m[p] = v
}

// Methods reports, for a device pair, which methods were found to work.
func (c *Caps) Methods() (clone, cfr bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.m {
		clone = clone || v.clone == capYes
		cfr = cfr || v.cfr == capYes
	}
	return
}

func unsupported(err error) bool {
	return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) ||
		errors.Is(err, unix.ENOTTY)
}

// ErrShort means the source ended before the size its stat gave: it was
// truncated while being copied.
var ErrShort = errors.New("source shorter than its stat size (changed while copying)")

// Copy copies size bytes of sfd into the empty file dfd. srcDev and dstDev
// select the capability entry. sparse asks for hole-preserving copy (use it
// when st_blocks*512 < st_size). It returns the bytes copied and the method.
func (d *DataCopier) Copy(sfd, dfd int, size int64, sparse bool, srcDev, dstDev uint64) (int64, Method, error) {
	if size == 0 {
		return 0, MethodNone, nil
	}
	p := devPair{srcDev, dstDev}
	c := d.Caps.get(p)
	if c.clone != capNo {
		err := unix.IoctlFileClone(dfd, sfd)
		if err == nil {
			if c.clone != capYes {
				d.Caps.set(p, func(v *caps) { v.clone = capYes })
			}
			return size, MethodClone, nil
		}
		if !unsupported(err) {
			return 0, MethodNone, fmt.Errorf("reflink: %w", err)
		}
		if c.clone == capUnknown {
			d.Caps.set(p, func(v *caps) { v.clone = capNo })
		}
	}
	if sparse {
		n, m, err := d.copySparse(sfd, dfd, size, p)
		if err == nil || !errors.Is(err, errNoSeekData) {
			return n, m, err
		}
	}
	if size >= DirectMin && c.cfr == capNo && c.direct != capNo && !d.NoDirect {
		n, err := d.copyDirect(sfd, dfd, size, p)
		if !errors.Is(err, errNoDirect) {
			return n, MethodDirect, err
		}
	}
	return d.copyRange(sfd, dfd, 0, size, p)
}

// DirectMin is the smallest file copied with copyDirect; directWindow is
// how much of the source it maps at a time.
const (
	DirectMin    = 256 << 10
	directWindow = 256 << 10
)

var errNoDirect = errors.New("O_DIRECT not supported")

// copyDirect copies a file between filesystems without copying its bytes
// in memory: the source is mapped (its pages are the page cache's, read
// ahead by the prefetcher) and written to the destination with O_DIRECT,
// so the disk takes the data straight from those pages. sendfile would
// copy every byte from the source's page cache into the destination's,
// and that copy was a third of the CPU time of a copy between two disks.
// Writes are whole 4 KiB blocks; the file is then cut to its size. A
// destination that refuses O_DIRECT (some FUSE and network filesystems)
// says so once per device pair (errNoDirect) and gets sendfile.
func (d *DataCopier) copyDirect(sfd, dfd int, size int64, p devPair) (int64, error) {
	const block = 4096
	mapped := (size + block - 1) &^ (block - 1)
	var done int64
	var win []byte // the mapped window of the source that starts at winOff
	var winOff int64
	unmap := func() {
		if win != nil {
			unix.Munmap(win)
			win = nil
		}
	}
	defer unmap()
	// noDirect gives up on O_DIRECT for the device pair, with the fd back
	// in its normal mode for sendfile.
	noDirect := func() (int64, error) {
		d.Caps.set(p, func(v *caps) { v.direct = capNo })
		unix.FcntlInt(uintptr(dfd), unix.F_SETFL, 0)
		return 0, errNoDirect
	}
	for done < mapped {
		// The source is mapped a window at a time: its pages count as
		// this process's memory while they are mapped.
		if win == nil {
			var err error
			win, err = unix.Mmap(sfd, done, int(min(mapped-done, directWindow)), unix.PROT_READ, unix.MAP_SHARED)
			if err != nil {
				win = nil
				if done == 0 {
					return noDirect() // a file that cannot be mapped (FUSE direct_io)
				}
				return min(done, size), fmt.Errorf("mmap: %w", err)
			}
			winOff = done
			if done == 0 {
				if _, err := unix.FcntlInt(uintptr(dfd), unix.F_SETFL, unix.O_DIRECT); err != nil {
					return noDirect()
				}
			}
		}
		k, err := unix.Pwrite(dfd, win[done-winOff:], done)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if done == 0 && errors.Is(err, unix.EINVAL) {
				// O_DIRECT taken by fcntl but not by write (alignment
				// the device wants larger than a block).
				return noDirect()
			}
			if errors.Is(err, unix.EFAULT) {
				// The kernel could not read the source's pages: they
				// are past its end (it got shorter), or unreadable.
				var st unix.Stat_t
				if unix.Fstat(sfd, &st) == nil && st.Size >= size {
					return min(done, size), fmt.Errorf("read: %w", unix.EIO)
				}
				return min(done, size), ErrShort
			}
			return min(done, size), fmt.Errorf("write: %w", err)
		}
		if k == 0 {
			return min(done, size), fmt.Errorf("write: no progress")
		}
		done += int64(k)
		if done-winOff == int64(len(win)) {
			unmap()
		}
	}
	if mapped != size {
		if err := unix.Ftruncate(dfd, size); err != nil {
			return size, fmt.Errorf("truncate to %d: %w", size, err)
		}
	}
	if c := d.Caps.get(p); c.direct == capUnknown {
		d.Caps.set(p, func(v *caps) { v.direct = capYes })
	}
	return size, nil
}

var errNoSeekData = errors.New("SEEK_DATA not supported")

func (d *DataCopier) copySparse(sfd, dfd int, size int64, p devPair) (int64, Method, error) {
	var total int64
	method := MethodNone
	pos := int64(0)
	for pos < size {
		data, err := unix.Seek(sfd, pos, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // only a hole remains
			}
			if pos == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				return 0, MethodNone, errNoSeekData
			}
			return total, method, fmt.Errorf("seek data: %w", err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			return total, method, fmt.Errorf("seek hole: %w", err)
		}
		if hole > size {
			hole = size
		}
		n, m, err := d.copyRange(sfd, dfd, data, hole-data, p)
		total += n
		if m > method {
			method = m
		}
		if err != nil {
			return total, method, err
		}
		pos = hole
	}
	if err := unix.Ftruncate(dfd, size); err != nil {
		return total, method, fmt.Errorf("truncate to %d: %w", size, err)
	}
	return total, method, nil
}

// copyRange copies [off, off+n) of sfd to the same offsets of dfd.
func (d *DataCopier) copyRange(sfd, dfd int, off, n int64, p devPair) (int64, Method, error) {
	var done int64
	if d.Caps.get(p).cfr != capNo {
		for done < n {
			roff, woff := off+done, off+done
			chunk := n - done
			if chunk > 1<<30 {
				chunk = 1 << 30
			}
			k, err := unix.CopyFileRange(sfd, &roff, dfd, &woff, int(chunk), 0)
			if err != nil {
				if done == 0 && unsupported(err) {
					d.Caps.set(p, func(v *caps) { v.cfr = capNo })
					break
				}
				return done, MethodCopyRange, fmt.Errorf("copy_file_range: %w", err)
			}
			if k == 0 {
				// Either EOF (file shrank) or a filesystem that does not
				// really implement it; read/write below tells which.
				break
			}
			done += int64(k)
		}
		if done == n {
			if d.Caps.get(p).cfr == capUnknown {
				d.Caps.set(p, func(v *caps) { v.cfr = capYes })
			}
			return done, MethodCopyRange, nil
		}
	}
	// Across filesystems copy_file_range says EXDEV; sendfile still copies
	// page cache to page cache in the kernel, without a user buffer.
	if done < n && d.Caps.get(p).sendfile != capNo {
		// sendfile writes at dfd's file offset: a fresh file's is 0, and
		// nothing before the first range has moved it.
		var err error
		if off+done != 0 {
			_, err = unix.Seek(dfd, off+done, io.SeekStart)
		}
		if err == nil {
			start := done
			for done < n {
				roff := off + done
				chunk := min(n-done, 1<<30)
				k, err := unix.Sendfile(dfd, sfd, &roff, int(chunk))
				if err != nil {
					if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
						continue
					}
					if done == start && unsupported(err) {
						d.Caps.set(p, func(v *caps) { v.sendfile = capNo })
						break
					}
					return done, MethodSendfile, fmt.Errorf("sendfile: %w", err)
				}
				if k == 0 {
					break // EOF: read/write below tells whether it shrank
				}
				done += int64(k)
			}
			if done == n {
				if d.Caps.get(p).sendfile == capUnknown {
					d.Caps.set(p, func(v *caps) { v.sendfile = capYes })
				}
				return done, MethodSendfile, nil
			}
		}
	}
	if d.buf == nil {
		d.buf = make([]byte, 1<<20)
	}
	for done < n {
		want := n - done
		if want > int64(len(d.buf)) {
			want = int64(len(d.buf))
		}
		k, err := unix.Pread(sfd, d.buf[:want], off+done)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return done, MethodReadWrite, fmt.Errorf("read: %w", err)
		}
		if k == 0 {
			return done, MethodReadWrite, ErrShort
		}
		w := 0
		for w < k {
			m, err := unix.Pwrite(dfd, d.buf[w:k], off+done+int64(w))
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return done, MethodReadWrite, fmt.Errorf("write: %w", err)
			}
			w += m
		}
		done += int64(k)
	}
	return done, MethodReadWrite, nil
}
