package extsort

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
)

const (
	// minMergeBuf is the smallest per-run read buffer. A run's reader
	// grows its buffer for a frame that does not fit (records are at most
	// MaxRecord, and hlcp's are rarely above 1 KiB), so a small budget
	// still merges many runs in one pass.
	minMergeBuf = 32 << 10
	// frameBuf is the initial buffer of a run's frame reader, behind its
	// checked read buffer; it grows only for a frame larger than it.
	frameBuf = 4 << 10
	// maxMergeBuf is the largest per-run read buffer.
	maxMergeBuf = 1 << 20
	// progressEvery is how many records pass between progress calls.
	progressEvery = 1 << 16
)

// mergePlan returns the per-run buffer size and the fan-in (runs merged at
// once) for n runs within memBytes. One more buffer of the same size is used
// for the output. The fan-in is at least 2, so with a tiny budget the usage
// is 3 * minMergeBuf.
func mergePlan(memBytes, n int) (bufSize, fanIn int) {
	bufSize = memBytes / (n + 1)
	bufSize = min(max(bufSize, minMergeBuf), maxMergeBuf)
	fanIn = max(memBytes/bufSize-1, 2)
	return bufSize, fanIn
}

// maxOpenRuns bounds the fan-in by the open-file limit: a merge keeps a
// quarter of it at most, for the other merges and directory caches of the
// process. Small buffers allow a fan-in of thousands.
func maxOpenRuns() int {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) != nil {
		return 256
	}
	return int(max(min(r.Cur, 1<<20)/4, 2))
}

// Merge k-way merges the sorted runs into w as framed records in sorted order
// and returns the number of records written. It uses about memBytes for its
// read and write buffers (per-run buffers of 32 KiB to 1 MiB, at least 2 runs
// at a time). When there are more runs than fit, it first merges groups of
// runs (smallest first) into intermediate runs named merge-%06d in tmp (the
// directory of the first run if tmp is nil), deleting the intermediates it
// made; the input runs are never deleted. progress, if not nil, is called
// every 65536 records and at the end with the number of records written to w
// so far. A run whose size, record count or blocks are not the ones written
// is an error wrapping blockfile.ErrDamaged.
func Merge(runs []Run, tmp *fsx.Dir, memBytes int, w io.Writer, progress func(done int64)) (written int64, err error) {
	if tmp == nil && len(runs) > 0 {
		tmp = runs[0].Dir
	}
	bufSize, fanIn := mergePlan(memBytes, len(runs))
	fanIn = min(fanIn, maxOpenRuns())

	type source struct {
		Run
		temp bool // an intermediate made here
	}
	srcs := make([]source, len(runs))
	for i, r := range runs {
		srcs[i].Run = r
	}
	defer func() {
		for _, s := range srcs {
			if s.temp {
				s.Dir.Remove(s.Name)
			}
		}
	}()

	seq := 0
	group := make([]Run, 0, fanIn)
	for len(srcs) > fanIn {
		// Merge the smallest runs first. The first group is sized so that
		// every later group is full, which minimises the bytes rewritten.
		k := (len(srcs)-1)%(fanIn-1) + 1
		if k < 2 {
			k = fanIn
		}
		slices.SortStableFunc(srcs, func(a, b source) int {
			return cmp.Compare(a.Size, b.Size)
		})
		group = group[:0]
		for _, s := range srcs[:k] {
			group = append(group, s.Run)
		}
		f, name, err := createExcl(tmp, "merge-%06d", &seq)
		if err != nil {
			return 0, fmt.Errorf("extsort: create intermediate run: %w", err)
		}
		out := source{Run: Run{Dir: tmp, Name: name}, temp: true}
		bf := blockfile.NewWriterSize(f, bufSize) // the output's buffer
		out.Records, _, err = mergeInto(group, bufSize, bf, nil)
		if err == nil {
			err = bf.Close()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			tmp.Remove(name)
			return 0, fmt.Errorf("extsort: merge into intermediate run %s: %w", tmp.Join(name), err)
		}
		out.Size = bf.Size()
		for _, s := range srcs[:k] {
			if s.temp {
				s.Dir.Remove(s.Name)
			}
		}
		srcs = append(srcs[k:], out)
	}

	group = group[:0]
	for _, s := range srcs {
		group = append(group, s.Run)
	}
	bw := bufio.NewWriterSize(w, bufSize)
	written, _, err = mergeInto(group, bufSize, bw, progress)
	if err == nil {
		if err = bw.Flush(); err != nil {
			err = fmt.Errorf("extsort: merge output: %w", err)
		}
	}
	if err != nil {
		return written, err
	}
	if progress != nil {
		progress(written)
	}
	return written, nil
}

// runReader opens a run for reading: its size on disk must be the one
// written, and its blocks are checked as they are read.
type runReader struct {
	*Reader
	run  Run
	f    *os.File
	seen int64
}

func openRun(run Run, bufSize int) (*runReader, error) {
	f, err := run.Dir.Open(run.Name)
	if err != nil {
		return nil, fmt.Errorf("extsort: merge: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("extsort: merge: %w", err)
	}
	if fi.Size() != run.Size {
		f.Close()
		return nil, &blockfile.DamageError{File: run.Path(), Offset: fi.Size(), Why: fmt.Sprintf("%d bytes, not the %d written", fi.Size(), run.Size)}
	}
	// The checked read buffer and the frame reader together take bufSize.
	br, err := blockfile.NewReaderSize(f, run.Size, 0, bufSize-frameBuf)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &runReader{Reader: NewReader(br, frameBuf), run: run, f: f}, nil
}

// next is Reader.Next that also checks, at the end, that the run held as
// many records as were written to it.
func (r *runReader) next() ([]byte, error) {
	rec, err := r.Reader.Next()
	if err == nil {
		r.seen++
		return rec, nil
	}
	if err == io.EOF && r.seen != r.run.Records {
		return nil, &blockfile.DamageError{File: r.run.Path(), Offset: r.run.Size, Why: fmt.Sprintf("%d records, not the %d written", r.seen, r.run.Records)}
	}
	return nil, err
}

// mergeInto merges the runs into w with a loser tree and returns the
// number of records and of bytes (frames) written.
func mergeInto(runs []Run, bufSize int, w io.Writer, progress func(int64)) (records, size int64, err error) {
	k := len(runs)
	rd := make([]*runReader, 0, k)
	defer func() {
		for _, r := range rd {
			r.f.Close()
		}
	}()
	cur := make([][]byte, k)
	key := make([]uint64, k) // first 8 bytes of cur, big-endian, zero-padded
	live := make([]bool, k)
	for _, run := range runs {
		r, err := openRun(run, bufSize)
		if err != nil {
			return 0, 0, err
		}
		rd = append(rd, r)
	}
	advance := func(i int) error {
		rec, err := rd[i].next()
		if err == nil {
			cur[i], live[i] = rec, true
			if len(rec) >= 8 {
				key[i] = binary.BigEndian.Uint64(rec)
			} else {
				var p [8]byte
				copy(p[:], rec)
				key[i] = binary.BigEndian.Uint64(p[:])
			}
			return nil
		}
		cur[i], live[i] = nil, false
		if errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("extsort: read run %s: %w", runs[i].Path(), err)
	}
	// less reports whether source a's record goes before b's; exhausted
	// sources go last. Unequal prefix keys decide (see compareEntries);
	// equal ones fall back to the full records.
	less := func(a, b int) bool {
		if !live[b] {
			return live[a]
		}
		if !live[a] {
			return false
		}
		if key[a] != key[b] {
			return key[a] < key[b]
		}
		return bytes.Compare(cur[a], cur[b]) < 0
	}

	// Loser tree: leaves are sources 0..k-1 at virtual nodes k..2k-1;
	// tree[1..k-1] hold the loser of the match at each internal node and
	// tree[0] the overall winner. During construction -1 marks a node that
	// has not seen its first contender yet.
	tree := make([]int, max(k, 1))
	for i := range tree {
		tree[i] = -1
	}
	adjust := func(s int) {
		for t := (s + k) / 2; t > 0; t /= 2 {
			switch {
			case tree[t] == -1:
				tree[t] = s
				return
			case less(tree[t], s):
				tree[t], s = s, tree[t]
			}
		}
		tree[0] = s
	}
	for i := k - 1; i >= 0; i-- {
		if err := advance(i); err != nil {
			return 0, 0, err
		}
		adjust(i)
	}

	var hdr [binary.MaxVarintLen64]byte
	for k > 0 {
		s := tree[0]
		if !live[s] {
			break
		}
		rec := cur[s]
		h := binary.PutUvarint(hdr[:], uint64(len(rec)))
		w.Write(hdr[:h])
		if _, err := w.Write(rec); err != nil {
			return records, size, fmt.Errorf("extsort: merge write: %w", err)
		}
		records++
		size += int64(h + len(rec))
		if progress != nil && records%progressEvery == 0 {
			progress(records)
		}
		if err := advance(s); err != nil {
			return records, size, err
		}
		adjust(s)
	}
	return records, size, nil
}

// MergeStream merges runs in a goroutine (as Merge does) and returns a
// Reader of the merged records. wait closes the stream, which stops a merge
// that has not finished, and returns the merge's error; call it once, when
// the reader is drained or abandoned.
func MergeStream(runs []Run, tmp *fsx.Dir, memBytes int, progress func(done int64)) (r *Reader, wait func() error) {
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		_, err := Merge(runs, tmp, memBytes, pw, progress)
		pw.CloseWithError(err)
		errc <- err
	}()
	return NewReader(pr, 256<<10), func() error {
		pr.Close()
		return <-errc
	}
}
