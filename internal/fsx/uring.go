package fsx

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring is a minimal io_uring instance that makes batches of linkat calls
// with one io_uring_enter per batch instead of one syscall per link. A
// snapshot repository has far more links than anything else: in the
// benchmark's trees 9 paths in 10 are links, so batching them removes most
// of the copy's user/kernel crossings. The kernel work per link is the same
// (the kernel runs IORING_OP_LINKAT in its io-wq worker threads).
//
// A Ring is not safe for concurrent use: each copier worker has its own.
// NewRing fails where io_uring is not to be had (kernels before 5.15,
// kernel.io_uring_disabled, seccomp filters such as container defaults):
// the caller then makes the links one syscall at a time.
type Ring struct {
	fd      int
	entries uint32
	sqMem   []byte
	cqMem   []byte
	sqeMem  []byte

	sqHead, sqTail *uint32
	sqMask         uint32
	sqArray        unsafe.Pointer
	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           unsafe.Pointer

	names []byte // the NUL-terminated names of the batch being built
	ops   []ringOp
}

// LinkOp is one linkat(OldDir, OldName, NewDir, NewName, 0) of a batch;
// Err is its result after Ring.Linkat.
type LinkOp struct {
	OldDir  int
	OldName []byte
	NewDir  int
	NewName []byte
	Err     error
}

type ringOp struct{ old, new int } // offsets of the names in Ring.names

// Mirrors of the kernel's uapi structures (include/uapi/linux/io_uring.h).
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		userAddr                                                        uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		userAddr                                                        uint64
	}
}

type uringSQE struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	addr2    uint64 // off / addr2
	addr     uint64
	len      uint32
	opFlags  uint32 // rw_flags, hardlink_flags, ...
	userData uint64
	bufIndex uint16
	persona  uint16
	spliceFd int32
	addr3    uint64
	pad      uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

const (
	uringOpLinkat      = 39 // IORING_OP_LINKAT, Linux 5.15
	uringOffSQRing     = 0
	uringOffCQRing     = 0x8000000
	uringOffSQEs       = 0x10000000
	uringEnterGetevent = 1 // IORING_ENTER_GETEVENTS

	uringRegisterIowqMaxWorkers = 19 // IORING_REGISTER_IOWQ_MAX_WORKERS
)

func init() {
	if unsafe.Sizeof(uringSQE{}) != 64 || unsafe.Sizeof(uringCQE{}) != 16 || unsafe.Sizeof(uringParams{}) != 120 {
		panic("fsx: io_uring structure sizes")
	}
}

// ErrNoRing says that io_uring cannot be used here.
var ErrNoRing = errors.New("io_uring not available")

// NewRing sets up a ring of entries submission slots (a power of two).
func NewRing(entries uint32) (*Ring, error) {
	var p uringParams
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("%w: io_uring_setup: %v", ErrNoRing, e)
	}
	r := &Ring{fd: int(fd), entries: p.sqEntries}
	fail := func(what string, err error) (*Ring, error) {
		r.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrNoRing, what, err)
	}
	var err error
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	if r.sqMem, err = unix.Mmap(r.fd, uringOffSQRing, int(p.sqOff.array+p.sqEntries*4), prot, flags); err != nil {
		return fail("mmap sq ring", err)
	}
	if r.cqMem, err = unix.Mmap(r.fd, uringOffCQRing, int(p.cqOff.cqes+p.cqEntries*16), prot, flags); err != nil {
		return fail("mmap cq ring", err)
	}
	if r.sqeMem, err = unix.Mmap(r.fd, uringOffSQEs, int(p.sqEntries*64), prot, flags); err != nil {
		return fail("mmap sqes", err)
	}
	sq, cq := unsafe.Pointer(&r.sqMem[0]), unsafe.Pointer(&r.cqMem[0])
	r.sqHead = (*uint32)(unsafe.Add(sq, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(sq, p.sqOff.tail))
	r.sqMask = *(*uint32)(unsafe.Add(sq, p.sqOff.ringMask))
	r.sqArray = unsafe.Add(sq, p.sqOff.array)
	r.cqHead = (*uint32)(unsafe.Add(cq, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(cq, p.cqOff.tail))
	r.cqMask = *(*uint32)(unsafe.Add(cq, p.cqOff.ringMask))
	r.cqes = unsafe.Add(cq, p.cqOff.cqes)
	// Links into one directory take its lock one at a time: more than one
	// kernel worker per ring only adds threads that wait for it. (Best
	// effort: kernels before 5.15 have no such limit.)
	limits := [2]uint32{1, 1} // bounded, unbound io-wq workers
	unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), uringRegisterIowqMaxWorkers, uintptr(unsafe.Pointer(&limits[0])), 2, 0, 0)
	return r, nil
}

// drain waits, as well as it can, for n more completions and drops them.
func (r *Ring) drain(n int) {
	for tries := 0; n > 0 && tries < 1000; tries++ {
		head, ctail := atomic.LoadUint32(r.cqHead), atomic.LoadUint32(r.cqTail)
		atomic.StoreUint32(r.cqHead, ctail)
		if n -= int(ctail - head); n > 0 {
			unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, 1, uringEnterGetevent, 0, 0)
		}
	}
}

// Close releases the ring.
func (r *Ring) Close() {
	for _, m := range [][]byte{r.sqeMem, r.cqMem, r.sqMem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	r.sqeMem, r.cqMem, r.sqMem = nil, nil, nil
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

// Size is the most operations one call takes.
func (r *Ring) Size() int { return int(r.entries) }

// Linkat makes every link of ops (at most Size()) and sets each op's Err.
// The links of one batch run concurrently in the kernel, in no set order.
func (r *Ring) Linkat(ops []LinkOp) error {
	if len(ops) > int(r.entries) {
		return fmt.Errorf("fsx: %d links for a ring of %d", len(ops), r.entries)
	}
	if len(ops) == 0 {
		return nil
	}
	// The names, NUL-terminated, in one buffer that does not move while
	// the kernel reads it (it copies them when it takes the entries).
	r.names, r.ops = r.names[:0], r.ops[:0]
	for i := range ops {
		o := ringOp{old: len(r.names)}
		r.names = append(append(r.names, ops[i].OldName...), 0)
		o.new = len(r.names)
		r.names = append(append(r.names, ops[i].NewName...), 0)
		r.ops = append(r.ops, o)
	}
	base := unsafe.Pointer(&r.names[0])
	tail := atomic.LoadUint32(r.sqTail)
	start := tail
	for i := range ops {
		idx := tail & r.sqMask
		sqe := (*uringSQE)(unsafe.Add(unsafe.Pointer(&r.sqeMem[0]), uintptr(idx)*64))
		*sqe = uringSQE{
			opcode:   uringOpLinkat,
			fd:       int32(ops[i].OldDir),
			addr:     uint64(uintptr(unsafe.Add(base, r.ops[i].old))),
			len:      uint32(ops[i].NewDir),
			addr2:    uint64(uintptr(unsafe.Add(base, r.ops[i].new))),
			userData: uint64(i),
		}
		*(*uint32)(unsafe.Add(r.sqArray, uintptr(idx)*4)) = idx
		tail++
	}
	atomic.StoreUint32(r.sqTail, tail) // publishes the entries to the kernel

	done := 0
	for done < len(ops) {
		toSubmit := tail - atomic.LoadUint32(r.sqHead)
		_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(len(ops)-done), uringEnterGetevent, 0, 0)
		if e != 0 && e != unix.EINTR && e != unix.EAGAIN && e != unix.EBUSY {
			runtime.KeepAlive(r.names)
			if toSubmit == uint32(len(ops)) && done == 0 {
				// Nothing was taken: the caller can do them one by one.
				atomic.StoreUint32(r.sqTail, tail-toSubmit)
				return fmt.Errorf("%w: io_uring_enter: %v", ErrNoRing, e)
			}
			// Entries not taken are taken back; links already taken
			// may still run, with the caller's directory fds: wait for
			// them before the caller gives those back.
			head := atomic.LoadUint32(r.sqHead)
			atomic.StoreUint32(r.sqTail, head)
			r.drain(int(head-start) - done)
			return fmt.Errorf("io_uring_enter: %v", e)
		}
		head := atomic.LoadUint32(r.cqHead)
		ctail := atomic.LoadUint32(r.cqTail)
		for ; head != ctail; head++ {
			cqe := (*uringCQE)(unsafe.Add(r.cqes, uintptr(head&r.cqMask)*16))
			i := int(cqe.userData)
			if i < len(ops) {
				ops[i].Err = nil
				if cqe.res < 0 {
					ops[i].Err = unix.Errno(-cqe.res)
				}
				done++
			}
		}
		atomic.StoreUint32(r.cqHead, head)
	}
	runtime.KeepAlive(r.names)
	return nil
}
