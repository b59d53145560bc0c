package plan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"hlcp/internal/blockfile"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// DirTable is the sorted directory records (file "dirs") with an index of
// their offsets by id (file "dirs.idx": n+1 big-endian uint64), both
// sealed in checksummed blocks. Lookups are two checked preads; only the
// names and parents are held in RAM, and only when they fit the share of
// the budget given to LoadNames, so it scales with the disk, not the
// budget. Safe for concurrent use.
type DirTable struct {
	f, idx   *os.File
	bf, bidx *blockfile.File
	n        uint32
	// When the table's names are few enough (see LoadNames), each
	// directory's parent and name are held in RAM for Resolve:
	// names[nameOffs[id]:nameOffs[id+1]] is the parent id (4 bytes,
	// big-endian) then the name.
	names    []byte
	nameOffs []uint32
}

// LoadNames reads every directory's parent and name into RAM when they take
// at most maxBytes (about 8 bytes plus the name per directory), so that
// Resolve, the directory caches' lookup, needs no syscall. It reports
// whether it did. The rest of a record (owner, mode, times) stays on disk:
// it is read once, in order, by Scan and ScanReverse.
func (t *DirTable) LoadNames(maxBytes int64) (bool, error) {
	if int64(t.n+1)*4 > maxBytes {
		return false, nil
	}
	offs := make([]uint32, 0, t.n+1)
	// Each record in the file is a frame of at least 1 byte holding
	// DirHeader bytes and the name, so this bounds the names' total.
	var names []byte
	if est := t.bf.Len() - int64(t.n)*(DirHeader+1-4); est > 0 && est+int64(cap(offs))*4 <= maxBytes {
		names = make([]byte, 0, est)
	}
	errFull := errors.New("full")
	err := t.Scan(0, func(d *Dir) error {
		if int64(len(names))+4+int64(len(d.Name)) > math.MaxUint32 {
			return errFull
		}
		offs = append(offs, uint32(len(names)))
		names = binary.BigEndian.AppendUint32(names, d.Parent)
		names = append(names, d.Name...)
		// What is allocated counts, not what is used (names grows
		// by doubling when the estimate above was over the budget).
		if int64(cap(names))+int64(cap(offs))*4 > maxBytes {
			return errFull
		}
		return nil
	})
	if err == errFull {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	t.names, t.nameOffs = names, append(offs, uint32(len(names)))
	return true, nil
}

// BuildDirTable merges the directory runs into the files DirsFile and
// DirsIdxFile in out (sealed, fsynced, renamed into place), and returns
// the table and what was written of each file. Directory ids must be
// exactly 0..n-1.
func BuildDirTable(runs []extsort.Run, tmp, out *fsx.Dir, memBytes int) (*DirTable, map[string]blockfile.Info, error) {
	w, err := newSealed(out, DirsFile)
	if err != nil {
		return nil, nil, err
	}
	defer w.abort()
	if w.records, err = extsort.Merge(runs, tmp, memBytes, w, nil); err != nil {
		return nil, nil, fmt.Errorf("merge directory records: %w", err)
	}
	if err := w.seal(); err != nil {
		return nil, nil, err
	}
	// Second pass: check ids and write the index.
	br, err := blockfile.NewReaderSize(w.f, w.bf.Size(), 0, readBuf)
	if err != nil {
		return nil, nil, err
	}
	ix, err := newSealed(out, DirsIdxFile)
	if err != nil {
		return nil, nil, err
	}
	defer ix.abort()
	r := extsort.NewReader(br, 4<<10)
	var want uint32
	var d Dir
	for {
		off := r.Offset()
		rec, err := r.Next()
		if err == io.EOF {
			ix.Write(binary.BigEndian.AppendUint64(nil, uint64(off)))
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read directory records: %w", err)
		}
		if err := DecodeDir(rec, &d); err != nil {
			return nil, nil, err
		}
		if d.ID != want {
			return nil, nil, fmt.Errorf("directory table: id %d where %d was expected", d.ID, want)
		}
		want++
		ix.Write(binary.BigEndian.AppendUint64(nil, uint64(off)))
	}
	ix.records = int64(want) + 1
	// The data file is already flushed and sealed: commit only renames
	// and syncs it.
	files := make(map[string]blockfile.Info, 2)
	if files[DirsIdxFile], err = ix.commit(); err != nil {
		return nil, nil, err
	}
	if files[DirsFile], err = w.commit(); err != nil {
		return nil, nil, err
	}
	t, err := OpenDirTable(out, files)
	return t, files, err
}

// OpenDirTable opens a table written by BuildDirTable; files is what was
// written (its sizes and counts are checked).
func OpenDirTable(dir *fsx.Dir, files map[string]blockfile.Info) (*DirTable, error) {
	info, iinfo := files[DirsFile], files[DirsIdxFile]
	f, err := OpenChecked(dir, DirsFile, info)
	if err != nil {
		return nil, err
	}
	idx, err := OpenChecked(dir, DirsIdxFile, iinfo)
	if err != nil {
		f.Close()
		return nil, err
	}
	t := &DirTable{f: f, idx: idx}
	if t.bf, err = blockfile.Open(f, info.Size); err == nil {
		t.bidx, err = blockfile.Open(idx, iinfo.Size)
	}
	if err == nil {
		if l := t.bidx.Len(); l < 8 || l%8 != 0 || l/8 != iinfo.Records || iinfo.Records != info.Records+1 {
			err = &blockfile.DamageError{File: idx.Name(), Offset: iinfo.Size, Why: fmt.Sprintf("an index of %d bytes for %d directories", l, info.Records)}
		}
	}
	if err != nil {
		t.Close()
		return nil, err
	}
	t.n = uint32(t.bidx.Len()/8 - 1)
	return t, nil
}

// Close closes the table's files.
func (t *DirTable) Close() error {
	if t.idx != nil {
		t.idx.Close()
	}
	return t.f.Close()
}

// Len is the number of directories.
func (t *DirTable) Len() uint32 { return t.n }

// Get reads directory id into d (d.Name is a new slice).
func (t *DirTable) Get(id uint32, d *Dir) error {
	if id >= t.n {
		return fmt.Errorf("directory id %d out of range (%d directories)", id, t.n)
	}
	var ob [16]byte
	if err := t.bidx.ReadAt(ob[:], int64(id)*8); err != nil {
		return fmt.Errorf("directory index: %w", err)
	}
	start, end := int64(binary.BigEndian.Uint64(ob[:])), int64(binary.BigEndian.Uint64(ob[8:]))
	if end <= start || end-start > extsort.MaxRecord+10 {
		return &blockfile.DamageError{File: t.idx.Name(), Why: fmt.Sprintf("bad extent %d..%d for id %d", start, end, id)}
	}
	buf := make([]byte, end-start)
	if err := t.bf.ReadAt(buf, start); err != nil {
		return fmt.Errorf("directory table: %w", err)
	}
	l, k := binary.Uvarint(buf)
	if k <= 0 || int64(k)+int64(l) != end-start {
		return &blockfile.DamageError{File: t.f.Name(), Why: fmt.Sprintf("bad frame for id %d", id)}
	}
	return DecodeDir(buf[k:], d)
}

// Resolve is a fsx.Resolver over the table.
func (t *DirTable) Resolve(id uint32) (uint32, string, error) {
	if t.nameOffs != nil && id < t.n {
		rec := t.names[t.nameOffs[id]:t.nameOffs[id+1]]
		return binary.BigEndian.Uint32(rec), string(rec[4:]), nil
	}
	var d Dir
	if err := t.Get(id, &d); err != nil {
		return 0, "", err
	}
	return d.Parent, string(d.Name), nil
}

// Path is the path of directory id relative to the tree root ("" for the
// root), for messages. Errors are folded into the text.
func (t *DirTable) Path(id uint32) string {
	var parts []string
	for id != 0 {
		parent, name, err := t.Resolve(id)
		if err != nil {
			parts = append(parts, fmt.Sprintf("<dir %d: %v>", id, err))
			break
		}
		parts = append(parts, name)
		id = parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/")
}

// Rel is the path of name in directory dir, relative to the tree's root
// (the directory's own path when name is empty).
func (t *DirTable) Rel(dir uint32, name []byte) string {
	p := t.Path(dir)
	if p == "" {
		return string(name)
	}
	if len(name) == 0 {
		return p
	}
	return p + "/" + string(name)
}

// Scan calls fn for every directory from id `from` upwards, in id order
// (parents before children). d is reused between calls.
func (t *DirTable) Scan(from uint32, fn func(d *Dir) error) error {
	if from >= t.n {
		return nil
	}
	var ob [8]byte
	if err := t.bidx.ReadAt(ob[:], int64(from)*8); err != nil {
		return err
	}
	br, err := blockfile.NewReaderSize(t.f, t.bf.Size(), int64(binary.BigEndian.Uint64(ob[:])), readBuf)
	if err != nil {
		return err
	}
	r := extsort.NewReader(br, 4<<10)
	var d Dir
	for id := from; id < t.n; id++ {
		rec, err := r.Next()
		if err != nil {
			return fmt.Errorf("directory table at id %d: %w", id, asDamage(err, t.f.Name()))
		}
		if err := DecodeDir(rec, &d); err != nil {
			return err
		}
		if err := fn(&d); err != nil {
			return err
		}
	}
	return nil
}

// ScanReverse calls fn for every directory with id < below, from the highest
// id down (children before parents: a child's id is always above its
// parent's). It reads the table backwards in chunks.
func (t *DirTable) ScanReverse(below uint32, fn func(d *Dir) error) error {
	if below > t.n {
		below = t.n
	}
	const chunk = 4096
	offs := make([]byte, (chunk+1)*8)
	var buf []byte
	var d Dir
	recs := make([][]byte, 0, chunk)
	for hi := below; hi > 0; {
		lo := uint32(0)
		if hi > chunk {
			lo = hi - chunk
		}
		ob := offs[:(hi-lo+1)*8]
		if err := t.bidx.ReadAt(ob, int64(lo)*8); err != nil {
			return err
		}
		start := int64(binary.BigEndian.Uint64(ob))
		end := int64(binary.BigEndian.Uint64(ob[len(ob)-8:]))
		if end < start || end-start > int64(hi-lo)*(extsort.MaxRecord+10) {
			return &blockfile.DamageError{File: t.idx.Name(), Why: fmt.Sprintf("bad extent %d..%d near id %d", start, end, lo)}
		}
		if int64(cap(buf)) < end-start {
			buf = make([]byte, end-start)
		}
		buf = buf[:end-start]
		if err := t.bf.ReadAt(buf, start); err != nil {
			return err
		}
		recs = recs[:0]
		for p := buf; len(p) > 0; {
			l, k := binary.Uvarint(p)
			if k <= 0 || uint64(len(p)-k) < l {
				return &blockfile.DamageError{File: t.f.Name(), Why: fmt.Sprintf("bad frame near id %d", lo)}
			}
			recs = append(recs, p[k:k+int(l)])
			p = p[k+int(l):]
		}
		if len(recs) != int(hi-lo) {
			return &blockfile.DamageError{File: t.f.Name(), Why: fmt.Sprintf("%d records where %d were expected near id %d", len(recs), hi-lo, lo)}
		}
		for i := len(recs) - 1; i >= 0; i-- {
			if err := DecodeDir(recs[i], &d); err != nil {
				return err
			}
			if err := fn(&d); err != nil {
				return err
			}
		}
		hi = lo
	}
	return nil
}
