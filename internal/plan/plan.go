package plan

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"hlcp/internal/blockfile"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// Names of the files Build and BuildDirTable write.
const (
	PlanFile    = "plan"
	LinksFile   = "links"
	DirsFile    = "dirs"
	DirsIdxFile = "dirs.idx"
	linkRunsDir = "linkruns"
)

// Stats describes a plan: its paths and inode groups.
type Stats struct {
	Paths      int64 `json:"paths"`       // non-directory paths
	Groups     int64 `json:"groups"`      // distinct (dev, ino): inodes to create
	LinkGroups int64 `json:"link_groups"` // groups with more than one path
	MaxLinks   int64 `json:"max_links"`   // paths in the largest group
	Links      int64 `json:"links"`       // paths after the first of their group: the link file's records
	// Inodes by type (index: DT_* value).
	ByType [16]int64 `json:"by_type"`
}

// Build merges the sorted entry runs into the plan file and the link file
// in out (each written sealed to a temporary name, fsynced, then renamed;
// the link file first) and returns their statistics and what was written
// of each file, to be checked before they are read. It uses about
// 1.5*memBytes: the merge of the entries, and beside it, with half as
// much, the sort of the links (every path after the first of its group,
// as a Link record, sorted by destination directory) in a directory of
// tmp. progress, if not nil, gets the number of records written so far.
// When ctx ends, Build stops and returns its cause (nothing is renamed into
// place: a rerun sorts again).
func Build(ctx context.Context, runs []extsort.Run, tmp, out *fsx.Dir, memBytes int, progress func(int64)) (Stats, map[string]blockfile.Info, error) {
	if err := RemoveTemp(tmp, linkRunsDir); err != nil {
		return Stats{}, nil, err
	}
	ldir, err := tmp.Mkdir(linkRunsDir)
	if err != nil {
		return Stats{}, nil, err
	}
	defer func() {
		RemoveTemp(tmp, linkRunsDir)
		ldir.Close()
	}()
	w, err := newSealed(out, PlanFile)
	if err != nil {
		return Stats{}, nil, err
	}
	defer w.abort()
	b := &builder{plan: w, links: linkSorter{s: extsort.New(ldir, memBytes/2, false)}}
	// The merge streams the records; the builder counts the groups as
	// they go past and writes them to the plan file.
	r, wait := extsort.MergeStream(runs, tmp, memBytes, progress)
	if err := b.take(ctx, r); err != nil {
		wait()
		return b.st, nil, err
	}
	if err := wait(); err != nil {
		return b.st, nil, fmt.Errorf("merge entries: %w", err)
	}
	lruns, err := b.links.finish()
	if err != nil {
		return b.st, nil, fmt.Errorf("sort links: %w", err)
	}
	files := make(map[string]blockfile.Info, 2)
	lw, err := newSealed(out, LinksFile)
	if err != nil {
		return b.st, nil, err
	}
	defer lw.abort()
	if lw.records, err = extsort.Merge(lruns, ldir, memBytes, lw, nil); err != nil {
		return b.st, nil, fmt.Errorf("merge links: %w", err)
	}
	if files[LinksFile], err = lw.commit(); err != nil {
		return b.st, nil, err
	}
	if files[PlanFile], err = w.commit(); err != nil {
		return b.st, nil, err
	}
	return b.st, files, nil
}

// builder is Build's side of the merge: it writes the plan, counts the
// groups, and turns every path after the first of its group into a link.
type builder struct {
	st    Stats
	plan  *sealed
	links linkSorter
	prev  []byte // the current group's first record
	first Entry  // ... decoded (its name aliases prev)
	cur   int64  // paths of the current group so far
	frame []byte
}

// take reads the merged entries to the end.
func (b *builder) take(ctx context.Context, r *extsort.Reader) error {
	for {
		rec, err := r.Next()
		if err == io.EOF {
			b.endGroup()
			return nil
		}
		if err != nil {
			return fmt.Errorf("build plan: %w", err)
		}
		if len(rec) <= EntryHeader {
			return fmt.Errorf("build plan: bad entry record of %d bytes", len(rec))
		}
		b.st.Paths++
		if b.st.Paths%(64<<10) == 0 && ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err := b.add(rec); err != nil {
			return err
		}
	}
}

// add takes one entry record: the first of a new group, or a link of the
// current one; either way it goes to the plan file.
func (b *builder) add(rec []byte) error {
	if b.prev == nil || !SameInode(b.prev, rec) {
		b.endGroup()
		b.st.Groups++
		b.st.ByType[rec[20]&15]++
		b.cur = 0
		b.prev = append(b.prev[:0], rec...)
		b.first, _ = DecodeEntry(b.prev)
	} else {
		e, _ := DecodeEntry(rec)
		l := Link{Chunk: uint32((b.st.Groups - 1) / ChunkGroups), Dir: e.Dir, Name: e.Name, TDir: b.first.Dir, TName: b.first.Name, Dev: e.Dev, Ino: e.Ino, Type: e.Type}
		if err := b.links.add(&l); err != nil {
			return fmt.Errorf("sort links: %w", err)
		}
		b.st.Links++
	}
	b.cur++
	b.frame = extsort.AppendFrame(b.frame[:0], rec)
	if _, err := b.plan.Write(b.frame); err != nil {
		return err
	}
	b.plan.records++
	return nil
}

func (b *builder) endGroup() {
	if b.prev == nil {
		return
	}
	if b.cur > 1 {
		b.st.LinkGroups++
	}
	b.st.MaxLinks = max(b.st.MaxLinks, b.cur)
}

// linkSorter batches link records into their sort.
type linkSorter struct {
	s     *extsort.Sorter
	rec   []byte
	batch [][]byte
	buf   []byte
}

func (ls *linkSorter) add(l *Link) error {
	ls.rec = AppendLink(ls.rec[:0], l)
	if len(ls.buf)+len(ls.rec) > cap(ls.buf) {
		if err := ls.flush(); err != nil {
			return err
		}
		if cap(ls.buf) == 0 {
			ls.buf = make([]byte, 0, 256<<10)
		}
	}
	start := len(ls.buf)
	ls.buf = append(ls.buf, ls.rec...)
	ls.batch = append(ls.batch, ls.buf[start:len(ls.buf):len(ls.buf)])
	return nil
}

func (ls *linkSorter) flush() error {
	err := ls.s.AddBatch(ls.batch)
	ls.batch, ls.buf = ls.batch[:0], ls.buf[:0]
	return err
}

// finish sorts what is left and returns the runs.
func (ls *linkSorter) finish() ([]extsort.Run, error) {
	if err := ls.flush(); err != nil {
		return nil, err
	}
	runs, _, _, err := ls.s.Finish()
	return runs, err
}

// sealed is a state file being written: sealed in checksummed blocks
// under a temporary name, then fsynced and renamed to its name.
type sealed struct {
	dir  *fsx.Dir
	name string
	f    *os.File
	bf   *blockfile.Writer
	*bufio.Writer
	records int64
	sealed  bool // flushed, and the last block written
	done    bool // committed or aborted
}

func newSealed(dir *fsx.Dir, name string) (*sealed, error) {
	// A temporary file left by a crash is the job's own: replaced.
	f, err := dir.CreateReplacing(name + ".tmp")
	if err != nil {
		return nil, err
	}
	bf := blockfile.NewWriter(f)
	return &sealed{dir: dir, name: name, f: f, bf: bf, Writer: bufio.NewWriterSize(bf, readBuf)}, nil
}

// seal writes out the buffered data and the last block.
func (s *sealed) seal() error {
	if s.sealed {
		return nil
	}
	if err := s.Flush(); err != nil {
		return err
	}
	if err := s.bf.Close(); err != nil {
		return err
	}
	s.sealed = true
	return nil
}

// commit makes the file durable under its name and says what it holds.
func (s *sealed) commit() (blockfile.Info, error) {
	if err := s.seal(); err != nil {
		return blockfile.Info{}, err
	}
	if err := s.f.Sync(); err != nil {
		return blockfile.Info{}, err
	}
	if err := s.f.Close(); err != nil {
		return blockfile.Info{}, err
	}
	s.done = true
	if err := s.dir.Rename(s.name+".tmp", s.name); err != nil {
		return blockfile.Info{}, err
	}
	return blockfile.Info{Size: s.bf.Size(), Records: s.records}, nil
}

// abort removes the temporary file of a write that did not commit.
func (s *sealed) abort() {
	if !s.done {
		s.f.Close()
		s.dir.Remove(s.name + ".tmp")
		s.done = true
	}
}

// RemoveTemp removes the subdirectory name of dir that a sort made for its
// runs (extsort.IsRunName), if it exists. Anything else in it is not
// ours: it is left, and reported.
func RemoveTemp(dir *fsx.Dir, name string) error {
	return dir.RemoveOwn(name, extsort.IsRunName)
}

// readBuf is the read buffer of a plan, link or directory file read in
// order: large enough that the reads are few next to the records' other
// syscalls, small next to the copy's working set.
const readBuf = 256 << 10

// Reader reads a plan or link file's records from a given offset. The
// file's size must be the one recorded when it was written, and its
// blocks are checked as they are read; read from the start to the end, its
// record count is checked too.
type Reader struct {
	f    *os.File
	info blockfile.Info
	r    *extsort.Reader
	// base is the offset where r started.
	base int64
	seen int64
}

// OpenReader opens the file name in dir, which was written as info says,
// and positions it at offset (a value returned by Offset earlier, or 0).
func OpenReader(dir *fsx.Dir, name string, info blockfile.Info, offset int64) (*Reader, error) {
	f, err := OpenChecked(dir, name, info)
	if err != nil {
		return nil, err
	}
	br, err := blockfile.NewReaderSize(f, info.Size, offset, readBuf)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Reader{f: f, info: info, r: extsort.NewReader(br, 4<<10), base: offset}, nil
}

// OpenChecked opens the state file name in dir and checks that its size
// is the one recorded when it was written.
func OpenChecked(dir *fsx.Dir, name string, info blockfile.Info) (*os.File, error) {
	f, err := dir.Open(name)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.Size() != info.Size {
		f.Close()
		return nil, &blockfile.DamageError{File: dir.Join(name), Offset: fi.Size(), Why: fmt.Sprintf("%d bytes, not the %d written", fi.Size(), info.Size)}
	}
	return f, nil
}

// Next returns the next encoded record (valid until the next call) or
// io.EOF.
func (p *Reader) Next() ([]byte, error) {
	rec, err := p.r.Next()
	switch {
	case err == nil:
		p.seen++
	case err == io.EOF:
		if p.base == 0 && p.seen != p.info.Records {
			return nil, &blockfile.DamageError{File: p.f.Name(), Offset: p.info.Size, Why: fmt.Sprintf("%d records, not the %d written", p.seen, p.info.Records)}
		}
	default:
		err = asDamage(err, p.f.Name())
	}
	return rec, err
}

// asDamage turns an error about the framing of records whose blocks all
// passed their checksums (a frame cut by the end, a bad length) into the
// damage it is; I/O errors stay what they are.
func asDamage(err error, file string) error {
	if errors.Is(err, extsort.ErrBadFrame) && !errors.Is(err, blockfile.ErrDamaged) {
		return &blockfile.DamageError{File: file, Why: err.Error()}
	}
	return err
}

// Offset is the offset of the next record.
func (p *Reader) Offset() int64 { return p.base + p.r.Offset() }

// Close closes the file.
func (p *Reader) Close() error { return p.f.Close() }
