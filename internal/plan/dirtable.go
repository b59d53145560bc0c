package plan

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"hlcp/internal/extsort"
)

// DirTable is the sorted directory records (file "dirs") with an index of
// their offsets by id (file "dirs.idx": n+1 big-endian uint64). Lookups are
// two preads; nothing is held in RAM, so it scales with the disk, not the
// budget. Safe for concurrent use.
type DirTable struct {
	f, idx *os.File
	n      uint32
	// When the table is small enough (see Load), it is held in RAM:
	// mem is the dirs file, offs its index.
	mem  []byte
	offs []byte
}

// Load reads the whole table into memory when it takes at most maxBytes,
// so that lookups need no syscalls. It reports whether it did.
func (t *DirTable) Load(maxBytes int64) (bool, error) {
	fi, err := t.f.Stat()
	if err != nil {
		return false, err
	}
	size := fi.Size() + int64(t.n+1)*8
	if size > maxBytes {
		return false, nil
	}
	mem := make([]byte, fi.Size())
	if err := preadFull(t.f, mem, 0); err != nil {
		return false, err
	}
	offs := make([]byte, int64(t.n+1)*8)
	if err := preadFull(t.idx, offs, 0); err != nil {
		return false, err
	}
	t.mem, t.offs = mem, offs
	return true, nil
}

// BuildDirTable merges the directory runs into path and writes its index.
// Directory ids must be exactly 0..n-1.
func BuildDirTable(runs []string, tmpDir, path string, memBytes int) (*DirTable, error) {
	tmp := path + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	if _, err := extsort.Merge(runs, tmpDir, memBytes, bw, nil); err != nil {
		out.Close()
		return nil, fmt.Errorf("merge directory records: %w", err)
	}
	if err := bw.Flush(); err != nil {
		out.Close()
		return nil, err
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		out.Close()
		return nil, err
	}
	// Second pass: check ids and write the index.
	ix, err := os.Create(path + ".idx.tmp")
	if err != nil {
		out.Close()
		return nil, err
	}
	iw := bufio.NewWriterSize(ix, 1<<20)
	r := extsort.NewReader(out, 1<<20)
	var want uint32
	var d Dir
	for {
		off := r.Offset()
		rec, err := r.Next()
		if err == io.EOF {
			iw.Write(binary.BigEndian.AppendUint64(nil, uint64(off)))
			break
		}
		if err != nil {
			out.Close()
			ix.Close()
			return nil, fmt.Errorf("read directory records: %w", err)
		}
		if err := DecodeDir(rec, &d); err != nil {
			out.Close()
			ix.Close()
			return nil, err
		}
		if d.ID != want {
			out.Close()
			ix.Close()
			return nil, fmt.Errorf("directory table: id %d where %d was expected", d.ID, want)
		}
		want++
		iw.Write(binary.BigEndian.AppendUint64(nil, uint64(off)))
	}
	if err := iw.Flush(); err != nil {
		out.Close()
		ix.Close()
		return nil, err
	}
	for _, f := range []*os.File{out, ix} {
		if err := f.Sync(); err != nil {
			out.Close()
			ix.Close()
			return nil, err
		}
		f.Close()
	}
	if err := os.Rename(path+".idx.tmp", path+".idx"); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	return OpenDirTable(path)
}

// OpenDirTable opens a table written by BuildDirTable.
func OpenDirTable(path string) (*DirTable, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	idx, err := os.Open(path + ".idx")
	if err != nil {
		f.Close()
		return nil, err
	}
	st, err := idx.Stat()
	if err != nil {
		f.Close()
		idx.Close()
		return nil, err
	}
	if st.Size() < 8 || st.Size()%8 != 0 {
		f.Close()
		idx.Close()
		return nil, fmt.Errorf("directory index %s: bad size %d", path, st.Size())
	}
	return &DirTable{f: f, idx: idx, n: uint32(st.Size()/8 - 1)}, nil
}

// Close closes the table's files.
func (t *DirTable) Close() error {
	t.idx.Close()
	return t.f.Close()
}

// Len is the number of directories.
func (t *DirTable) Len() uint32 { return t.n }

func preadFull(f *os.File, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pread(int(f.Fd()), b, off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// Get reads directory id. d.Name must not be modified; it is valid as long
// as the table is open.
func (t *DirTable) Get(id uint32, d *Dir) error {
	if id >= t.n {
		return fmt.Errorf("directory id %d out of range (%d directories)", id, t.n)
	}
	var ob [16]byte
	if t.offs != nil {
		copy(ob[:], t.offs[int64(id)*8:])
	} else if err := preadFull(t.idx, ob[:], int64(id)*8); err != nil {
		return fmt.Errorf("directory index: %w", err)
	}
	start, end := int64(binary.BigEndian.Uint64(ob[:])), int64(binary.BigEndian.Uint64(ob[8:]))
	if end <= start || end-start > extsort.MaxRecord+10 {
		return fmt.Errorf("directory index: bad extent %d..%d for id %d", start, end, id)
	}
	var buf []byte
	if t.mem != nil {
		if end > int64(len(t.mem)) {
			return fmt.Errorf("directory index: extent %d..%d past the table", start, end)
		}
		buf = t.mem[start:end]
	} else {
		buf = make([]byte, end-start)
		if err := preadFull(t.f, buf, start); err != nil {
			return fmt.Errorf("directory table: %w", err)
		}
	}
	l, k := binary.Uvarint(buf)
	if k <= 0 || int64(k)+int64(l) != end-start {
		return fmt.Errorf("directory table: bad frame for id %d", id)
	}
	return DecodeDir(buf[k:], d)
}

// Resolve is a fsx.Resolver over the table.
func (t *DirTable) Resolve(id uint32) (uint32, string, error) {
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
	var d Dir
	for id != 0 {
		if err := t.Get(id, &d); err != nil {
			parts = append(parts, fmt.Sprintf("<dir %d: %v>", id, err))
			break
		}
		parts = append(parts, string(d.Name))
		id = d.Parent
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
	if err := preadFull(t.idx, ob[:], int64(from)*8); err != nil {
		return err
	}
	sr := io.NewSectionReader(t.f, int64(binary.BigEndian.Uint64(ob[:])), 1<<62)
	r := extsort.NewReader(sr, 1<<20)
	var d Dir
	for id := from; id < t.n; id++ {
		rec, err := r.Next()
		if err != nil {
			return fmt.Errorf("directory table at id %d: %w", id, err)
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
		if err := preadFull(t.idx, ob, int64(lo)*8); err != nil {
			return err
		}
		start := int64(binary.BigEndian.Uint64(ob))
		end := int64(binary.BigEndian.Uint64(ob[len(ob)-8:]))
		if int64(cap(buf)) < end-start {
			buf = make([]byte, end-start)
		}
		buf = buf[:end-start]
		if err := preadFull(t.f, buf, start); err != nil {
			return err
		}
		recs = recs[:0]
		for p := buf; len(p) > 0; {
			l, k := binary.Uvarint(p)
			if k <= 0 || uint64(len(p)-k) < l {
				return fmt.Errorf("directory table: bad frame near id %d", lo)
			}
			recs = append(recs, p[k:k+int(l)])
			p = p[k+int(l):]
		}
		if len(recs) != int(hi-lo) {
			return fmt.Errorf("directory table: %d records where %d expected", len(recs), hi-lo)
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
