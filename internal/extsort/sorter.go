// Package extsort is an external merge sort for opaque byte records within a
// fixed memory budget.
//
// Records are ordered by bytes.Compare on the whole record; duplicates are
// kept. A Sorter accumulates records in RAM and spills sorted runs to files;
// Merge k-way merges the runs (in several passes if there are too many) into a
// stream of framed records (see AppendFrame and Reader).
//
// Run files live in a directory reached through its fd (fsx.Dir), are
// created with O_EXCL, and are sealed in checksummed blocks (blockfile): a
// run is read back only when its size and its record count are the ones
// written, and every block checks out.
package extsort

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"unsafe"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
)

// Run is one sorted run file: its directory, its name there, its size on
// disk and its number of records, which are checked when it is read.
type Run struct {
	Dir     *fsx.Dir
	Name    string
	Size    int64
	Records int64
}

// Path names the run in messages.
func (r Run) Path() string { return r.Dir.Join(r.Name) }

const (
	minMem        = 256 << 10
	maxRunWBuf    = 1 << 20       // run file bufio.Writer size
	minRunWBuf    = 64 << 10      // ... scaled to memBytes/16 in between
	maxBufferSize = math.MaxInt32 // per buffer; offsets are uint32
)

// entry is the sort index element for one buffered record. k0 and k1 hold the
// first 16 bytes of the record, big-endian and zero-padded, so most
// comparisons never touch the arena.
type entry struct {
	k0, k1 uint64
	off    uint32 // arena offset of the record
	n      uint32 // record length
}

const entrySize = int(unsafe.Sizeof(entry{}))

// buffer is one in-memory sort buffer. A single allocation holds both the
// record arena, growing up from the start, and the index entries, growing down
// from the end, so the split adapts to the record sizes and no byte of the
// budget is wasted. mem and arena alias the same memory; entry contains no
// pointers, so viewing it as bytes is safe.
type buffer struct {
	mem   []entry
	arena []byte
	used  int  // arena bytes in use: arena[:used]
	n     int  // entries in use: mem[len(mem)-n:]
	sink  byte // keeps writeBuffer's prefetching loads alive
}

func newBuffer(size int) *buffer {
	mem := make([]entry, size/entrySize)
	arena := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(mem))), len(mem)*entrySize)
	return &buffer{mem: mem, arena: arena}
}

// fits reports whether a record of l bytes can be added.
func (b *buffer) fits(l int) bool {
	return b.used+l <= (len(b.mem)-b.n-1)*entrySize
}

func (b *buffer) add(rec []byte) {
	off := b.used
	b.used += copy(b.arena[off:], rec)
	b.n++
	e := &b.mem[len(b.mem)-b.n]
	e.k0, e.k1 = prefixKey(rec)
	e.off = uint32(off)
	e.n = uint32(len(rec))
}

func (b *buffer) entries() []entry { return b.mem[len(b.mem)-b.n:] }

func (b *buffer) reset() { b.used, b.n = 0, 0 }

// sort orders the entries exactly as bytes.Compare orders the records.
func (b *buffer) sort() { sortEntries(b.entries(), b.arena) }

// compareEntries compares two records by their 16-byte prefix keys and falls
// back to bytes.Compare of the full records when the keys are equal. Equal
// keys do not imply equal prefixes of the records' lengths ("ab" and "ab\x00"
// have the same zero-padded key), which the fallback resolves. Unequal keys
// order correctly: at the first differing key byte either both records have a
// real byte there, or the one with the padding zero is a proper prefix of the
// other up to that point and so is smaller.
func compareEntries(arena []byte, x, y *entry) int {
	if x.k0 != y.k0 {
		if x.k0 < y.k0 {
			return -1
		}
		return 1
	}
	if x.k1 != y.k1 {
		if x.k1 < y.k1 {
			return -1
		}
		return 1
	}
	return bytes.Compare(arena[x.off:x.off+x.n], arena[y.off:y.off+y.n])
}

func prefixKey(rec []byte) (uint64, uint64) {
	if len(rec) >= 16 {
		return binary.BigEndian.Uint64(rec), binary.BigEndian.Uint64(rec[8:])
	}
	var p [16]byte
	copy(p[:], rec)
	return binary.BigEndian.Uint64(p[:8]), binary.BigEndian.Uint64(p[8:])
}

// Sorter accumulates records in RAM and spills sorted runs to files in a
// directory. It is safe for concurrent use by multiple goroutines.
type Sorter struct {
	dir     *fsx.Dir
	sync    bool
	bufSize int // bytes per buffer (arena + index)

	mu       sync.Mutex
	cur      *buffer // buffer being filled; nil until the first Add
	spare    *buffer // idle second buffer, if allocated and not spilling
	inflight bool    // a background spill is running; its result comes on done
	done     chan spillResult
	records  int64
	bytes    int64
	runs     []Run
	err      error // sticky
	finished bool

	// Used only by the (single) spill in progress; ownership passes with
	// the done channel and mu.
	bw   *bufio.Writer
	bf   *blockfile.Writer
	wbuf int
	seq  int
}

type spillResult struct {
	buf *buffer
	run Run
	err error
}

// New returns a sorter that writes runs into dir and uses at
// most memBytes of RAM for its buffers in total: the run file write buffer and
// two sort buffers (arena and index each), one filled by Add while the other is
// sorted and written on a background goroutine. memBytes below 256 KiB is raised
// to 256 KiB. Buffers are allocated on demand (the second one at the first
// spill) and reused. If sync is true each run file, and its directory entry, is
// fsynced before the run is reported.
func New(dir *fsx.Dir, memBytes int, sync bool) *Sorter {
	memBytes = max(memBytes, minMem)
	wbuf := min(max(memBytes/16, minRunWBuf), maxRunWBuf)
	bufSize := min((memBytes-wbuf-spillFrontBuf)/2, maxBufferSize)
	return newSorter(dir, bufSize, wbuf, sync)
}

// newSorter builds a sorter with explicit buffer sizes (tests use tiny ones).
func newSorter(dir *fsx.Dir, bufSize, wbuf int, sync bool) *Sorter {
	return &Sorter{
		dir:     dir,
		sync:    sync,
		bufSize: bufSize,
		wbuf:    wbuf,
		done:    make(chan spillResult, 1),
	}
}

var errFinished = errors.New("extsort: sorter already finished")

// Add copies rec into the sorter. Records longer than MaxRecord are rejected.
// When the buffer is full it is handed to a background goroutine that sorts
// it and writes it as a run file while Add goes on filling the other buffer;
// Add blocks only when that spill has not finished yet. An error from a
// background spill is returned by a later Add, AddBatch or Finish.
func (s *Sorter) Add(rec []byte) error {
	if len(rec) > MaxRecord {
		return fmt.Errorf("extsort: record of %d bytes exceeds MaxRecord (%d)", len(rec), MaxRecord)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addLocked(rec)
}

// AddBatch adds recs under one lock acquisition, with the same semantics as
// calling Add for each in order: it stops at the first error, with the records
// before it added.
func (s *Sorter) AddBatch(recs [][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, rec := range recs {
		if len(rec) > MaxRecord {
			return fmt.Errorf("extsort: batch record %d of %d bytes exceeds MaxRecord (%d)", i, len(rec), MaxRecord)
		}
		if err := s.addLocked(rec); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sorter) addLocked(rec []byte) error {
	if s.err != nil {
		return s.err
	}
	if s.finished {
		return errFinished
	}
	if s.cur == nil {
		s.cur = newBuffer(s.bufSize)
	}
	if !s.cur.fits(len(rec)) {
		if err := s.rotateLocked(); err != nil {
			return err
		}
		if !s.cur.fits(len(rec)) {
			return fmt.Errorf("extsort: record of %d bytes does not fit in a %d-byte buffer", len(rec), s.bufSize)
		}
	}
	s.cur.add(rec)
	s.records++
	s.bytes += int64(len(rec))
	return nil
}

// rotateLocked starts a background spill of the current buffer and switches
// to the other one, waiting for the previous spill if it is still running.
func (s *Sorter) rotateLocked() error {
	if s.cur.n == 0 {
		return nil
	}
	if err := s.waitLocked(); err != nil {
		return err
	}
	full := s.cur
	next := s.spare
	if next == nil {
		next = newBuffer(s.bufSize)
	}
	s.spare = nil
	s.cur = next
	s.inflight = true
	go func() {
		run, err := s.spill(full)
		full.reset()
		s.done <- spillResult{buf: full, run: run, err: err}
	}()
	return nil
}

// waitLocked waits for the background spill, if any, and records its result.
func (s *Sorter) waitLocked() error {
	if !s.inflight {
		return s.err
	}
	r := <-s.done
	s.inflight = false
	s.spare = r.buf
	if r.err != nil && s.err == nil {
		s.err = r.err
	}
	if r.err == nil {
		s.runs = append(s.runs, r.run)
	}
	return s.err
}

// Finish spills what is buffered, waits for background spills and returns the
// runs in creation order, the number of records and their total
// payload bytes. Zero records give zero runs. The buffers are released. On
// error the runs written so far are still returned so the caller can remove
// them. No Add may follow Finish.
func (s *Sorter) Finish() (runs []Run, records int64, bytes int64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return nil, 0, 0, errFinished
	}
	s.finished = true
	err = s.waitLocked()
	if err == nil && s.cur != nil && s.cur.n > 0 {
		var run Run
		run, err = s.spill(s.cur)
		if err != nil {
			s.err = err
		} else {
			s.runs = append(s.runs, run)
		}
	}
	s.cur, s.spare, s.bw, s.bf = nil, nil, nil, nil
	return s.runs, s.records, s.bytes, err
}

// spill sorts b and writes it to a new run file. Only one spill runs at a
// time.
func (s *Sorter) spill(b *buffer) (Run, error) {
	b.sort()
	f, name, err := createExcl(s.dir, "run-%06d", &s.seq)
	if err != nil {
		return Run{}, fmt.Errorf("extsort: create run: %w", err)
	}
	// The sealing writer holds the run's write buffer; the small bufio
	// in front of it only gives writeBuffer its AvailableBuffer.
	if s.bf == nil {
		s.bf = blockfile.NewWriterSize(f, s.wbuf)
		s.bw = bufio.NewWriterSize(s.bf, spillFrontBuf)
	} else {
		s.bf.Reset(f)
		s.bw.Reset(s.bf)
	}
	bf := s.bf
	err = writeBuffer(s.bw, b)
	if err == nil {
		err = s.bw.Flush()
	}
	if err == nil {
		err = bf.Close()
	}
	if err == nil && s.sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && s.sync {
		err = s.dir.Sync()
	}
	s.bw.Reset(nil)
	if err != nil {
		s.dir.Remove(name)
		return Run{}, fmt.Errorf("extsort: write run %s: %w", s.dir.Join(name), err)
	}
	return Run{Dir: s.dir, Name: name, Size: bf.Size(), Records: int64(b.n)}, nil
}

func writeBuffer(w *bufio.Writer, b *buffer) error {
	ents := b.entries()
	arena := b.arena
	var touch byte
	for len(ents) > 0 {
		block := ents[:min(len(ents), prefetchBlock)]
		ents = ents[len(block):]
		// The records are read in sorted order, i.e. from random places
		// in the arena. Touching a block of them first in a tight loop
		// lets their cache misses overlap instead of stalling one by one.
		for i := range block {
			e := &block[i]
			touch += arena[e.off] + arena[e.off+e.n/2]
		}
		for i := range block {
			e := &block[i]
			rec := arena[e.off : e.off+e.n]
			buf := w.AvailableBuffer()
			if cap(buf) < binary.MaxVarintLen64+len(rec) {
				if err := w.Flush(); err != nil {
					return err
				}
				buf = w.AvailableBuffer()
			}
			buf = binary.AppendUvarint(buf, uint64(len(rec)))
			buf = append(buf, rec...)
			w.Write(buf)
		}
	}
	b.sink = touch
	return nil
}

// spillFrontBuf is the bufio buffer in front of a spill's sealing writer
// (a larger record goes through it in one write).
const spillFrontBuf = 16 << 10

// prefetchBlock is how many records writeBuffer touches ahead of copying.
const prefetchBlock = 16

// createExcl creates a new file named by format and *seq in dir with
// O_EXCL, advancing *seq past names that already exist so it never
// overwrites a file.
func createExcl(dir *fsx.Dir, format string, seq *int) (*os.File, string, error) {
	for {
		name := fmt.Sprintf(format, *seq)
		*seq++
		f, err := dir.Create(name)
		if err == nil {
			return f, name, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, name, err
		}
	}
}

// IsRunName reports whether name is one a Sorter or a Merge gives its run
// files (run-NNNNNN, merge-NNNNNN).
func IsRunName(name string) bool {
	for _, p := range []string{"run-", "merge-"} {
		if rest, ok := strings.CutPrefix(name, p); ok && len(rest) >= 6 {
			for _, c := range rest {
				if c < '0' || c > '9' {
					return false
				}
			}
			return true
		}
	}
	return false
}
