package plan

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"hlcp/internal/extsort"
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

// Build merges the sorted entry runs into the plan file at path and the
// link file at linksPath (each written to a temporary name, fsynced, then
// renamed; the link file first) and returns their statistics. It uses about
// 1.5*memBytes: the merge of the entries, and beside it, with half as much,
// the sort of the links (every
// path after the first of its group, as a Link record, sorted by
// destination directory). progress, if not nil, gets the number of records
// written so far.
func Build(runs []string, tmpDir, path, linksPath string, memBytes int, progress func(int64)) (Stats, error) {
	var st Stats
	ldir := filepath.Join(tmpDir, "linkruns")
	os.RemoveAll(ldir)
	if err := os.Mkdir(ldir, 0o700); err != nil {
		return st, err
	}
	defer os.RemoveAll(ldir)
	links := extsort.New(ldir, memBytes/2, false)
	var (
		first  Entry // the current group's first path
		fname  []byte
		lrec   []byte
		lbatch [][]byte
		lbuf   []byte
	)
	flushLinks := func() error {
		err := links.AddBatch(lbatch)
		lbatch, lbuf = lbatch[:0], lbuf[:0]
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return st, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, readBuf)

	// The merge streams the records; this side counts the groups as they
	// go past and writes them to the plan file.
	r, wait := extsort.MergeStream(runs, tmpDir, memBytes, progress)
	var prev, frame []byte
	var cur int64
	endGroup := func() {
		if cur > 1 {
			st.LinkGroups++
		}
		if cur > st.MaxLinks {
			st.MaxLinks = cur
		}
	}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			wait()
			return st, fmt.Errorf("build plan: %w", err)
		}
		if len(rec) <= EntryHeader {
			wait()
			return st, fmt.Errorf("build plan: bad entry record of %d bytes", len(rec))
		}
		st.Paths++
		if prev == nil || !SameInode(prev, rec) {
			if prev != nil {
				endGroup()
			}
			st.Groups++
			st.ByType[rec[20]&15]++
			cur = 0
			prev = append(prev[:0], rec...)
			first, _ = DecodeEntry(prev)
			fname = append(fname[:0], first.Name...)
		} else {
			e, _ := DecodeEntry(rec)
			l := Link{Chunk: uint32((st.Groups - 1) / ChunkGroups), Dir: e.Dir, Name: e.Name, TDir: first.Dir, TName: fname, Dev: e.Dev, Ino: e.Ino, Type: e.Type}
			lrec = AppendLink(lrec[:0], &l)
			if len(lbuf)+len(lrec) > cap(lbuf) {
				if err := flushLinks(); err != nil {
					wait()
					return st, fmt.Errorf("sort links: %w", err)
				}
				if cap(lbuf) == 0 {
					lbuf = make([]byte, 0, 256<<10)
				}
			}
			start := len(lbuf)
			lbuf = append(lbuf, lrec...)
			lbatch = append(lbatch, lbuf[start:len(lbuf):len(lbuf)])
			st.Links++
		}
		cur++
		frame = extsort.AppendFrame(frame[:0], rec)
		if _, err := bw.Write(frame); err != nil {
			wait()
			return st, err
		}
	}
	if prev != nil {
		endGroup()
	}
	if err := wait(); err != nil {
		return st, fmt.Errorf("merge entries: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return st, err
	}
	if err := flushLinks(); err != nil {
		return st, fmt.Errorf("sort links: %w", err)
	}
	lruns, _, _, err := links.Finish()
	if err != nil {
		return st, fmt.Errorf("sort links: %w", err)
	}
	if err := writeSorted(lruns, ldir, linksPath, memBytes); err != nil {
		return st, fmt.Errorf("merge links: %w", err)
	}
	if err := f.Sync(); err != nil {
		return st, err
	}
	if err := f.Close(); err != nil {
		return st, err
	}
	return st, os.Rename(tmp, path)
}

// writeSorted merges runs into a new file at path (through a temporary
// name, fsynced).
func writeSorted(runs []string, tmpDir, path string, memBytes int) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := extsort.Merge(runs, tmpDir, memBytes, f, nil); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// readBuf is the read buffer of a plan, link or directory file read in
// order: large enough that the reads are few next to the records' other
// syscalls, small next to the copy's working set.
const readBuf = 256 << 10

// Reader reads a plan file's entries from a given offset.
type Reader struct {
	f *os.File
	r *extsort.Reader
	// base is the file offset where r started.
	base int64
}

// OpenReader opens the plan at path and positions it at offset (a value
// returned by Offset earlier, or 0).
func OpenReader(path string, offset int64) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return &Reader{f: f, r: extsort.NewReader(f, readBuf), base: offset}, nil
}

// Next returns the next encoded entry (valid until the next call) or io.EOF.
func (p *Reader) Next() ([]byte, error) { return p.r.Next() }

// Offset is the file offset of the next entry.
func (p *Reader) Offset() int64 { return p.base + p.r.Offset() }

// Close closes the file.
func (p *Reader) Close() error { return p.f.Close() }
