package mirror

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"hlcp/internal/blockfile"
	"hlcp/internal/differ"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// spool is a file of framed records written once, in order, and read back
// once or more from the start: sealed in checksummed blocks like every
// state file, in the job's state directory.
type spool struct {
	dir     *fsx.Dir
	name    string
	f       *os.File
	bf      *blockfile.Writer
	w       *bufio.Writer
	frame   []byte
	info    blockfile.Info
	written bool
}

func newSpool(dir *fsx.Dir, name string) (*spool, error) {
	f, err := dir.CreateReplacing(name)
	if err != nil {
		return nil, err
	}
	bf := blockfile.NewWriterSize(f, 64<<10)
	return &spool{dir: dir, name: name, f: f, bf: bf, w: bufio.NewWriterSize(bf, 16<<10)}, nil
}

func (s *spool) add(rec []byte) error {
	s.frame = extsort.AppendFrame(s.frame[:0], rec)
	_, err := s.w.Write(s.frame)
	s.info.Records++
	return err
}

// finish seals the file; it can then be read.
func (s *spool) finish() error {
	if s.written {
		return nil
	}
	s.written = true
	if err := s.w.Flush(); err != nil {
		return err
	}
	if err := s.bf.Close(); err != nil {
		return err
	}
	s.info.Size = s.bf.Size()
	return nil
}

// reader reads the records from the start; close it after.
func (s *spool) reader() (*recReader, error) {
	if err := s.finish(); err != nil {
		return nil, err
	}
	br, err := blockfile.NewReaderSize(s.f, s.info.Size, 0, 64<<10)
	if err != nil {
		return nil, err
	}
	return &recReader{r: extsort.NewReader(br, 4<<10), want: s.info.Records, name: s.f.Name()}, nil
}

func (s *spool) close() {
	s.f.Close()
	s.dir.Remove(s.name)
}

// recReader reads a spool or a merged sort, and checks the count of a
// spool at its end.
type recReader struct {
	r    *extsort.Reader
	want int64 // -1: no count to check
	seen int64
	name string
}

func (r *recReader) next() ([]byte, error) {
	rec, err := r.r.Next()
	if err == nil {
		r.seen++
		return rec, nil
	}
	if err == io.EOF && r.want >= 0 && r.seen != r.want {
		return nil, &blockfile.DamageError{File: r.name, Why: fmt.Sprintf("%d records, not the %d written", r.seen, r.want)}
	}
	return nil, err
}

// --- record layouts (big-endian, so that byte order is key order) ---

// A group record: one source path of a non-directory (differ.Pair): the
// source inode, the destination inode at the path (absent: all ones), the
// path. Spooled in the differ's order: by source inode, then destination
// inode, then path.
const groupHead = 1 + 8 + 8 + 8 + 8

var absentNode = differ.Node{Dev: ^uint64(0), Ino: ^uint64(0)}

func appendGroup(dst []byte, p differ.Pair) []byte {
	d := p.Dst
	if d == (differ.Node{}) {
		d = absentNode
	}
	dst = append(dst, p.Src.Type)
	dst = binary.BigEndian.AppendUint64(dst, p.Src.Dev)
	dst = binary.BigEndian.AppendUint64(dst, p.Src.Ino)
	dst = binary.BigEndian.AppendUint64(dst, d.Dev)
	dst = binary.BigEndian.AppendUint64(dst, d.Ino)
	return append(dst, p.Path...)
}

type groupRec struct {
	typ    uint8
	src    inode
	dst    inode // absentNode's when DST lacks the path
	path   []byte
	absent bool
}

type inode struct{ dev, ino uint64 }

func decodeGroup(rec []byte) (groupRec, error) {
	if len(rec) <= groupHead {
		return groupRec{}, fmt.Errorf("mirror: bad group record")
	}
	be := binary.BigEndian
	g := groupRec{typ: rec[0], src: inode{be.Uint64(rec[1:]), be.Uint64(rec[9:])}, dst: inode{be.Uint64(rec[17:]), be.Uint64(rec[25:])}, path: rec[groupHead:]}
	g.absent = g.dst.dev == absentNode.Dev && g.dst.ino == absentNode.Ino
	return g, nil
}

// A flag record, sorted by source inode then destination inode: what the
// differ found wrong with the pair (source inode, destination inode); or,
// with the destination all ones and a path, a path of the source inode
// where DST has another type of file.
const flagHead = 8 + 8 + 8 + 8 + 1

// Flags of a pair.
const (
	flagContent  = 1 << iota // type, size, mtime, content, symlink target or device number: not a copy
	flagMeta                 // mode, owner, xattrs, ACLs (or mtime with equal content): fixable in place
	flagJoined               // DST's inode serves another source inode first: not this one's
	flagOccupied             // the record is a path of the source inode where DST has another type
)

func appendFlag(dst []byte, s, d inode, flags uint8, path []byte) []byte {
	be := binary.BigEndian
	dst = be.AppendUint64(dst, s.dev)
	dst = be.AppendUint64(dst, s.ino)
	dst = be.AppendUint64(dst, d.dev)
	dst = be.AppendUint64(dst, d.ino)
	dst = append(dst, flags)
	return append(dst, path...)
}

type flagRec struct {
	src, dst inode
	flags    uint8
	path     []byte
}

func decodeFlag(rec []byte) (flagRec, error) {
	if len(rec) < flagHead {
		return flagRec{}, fmt.Errorf("mirror: bad flag record")
	}
	be := binary.BigEndian
	return flagRec{src: inode{be.Uint64(rec), be.Uint64(rec[8:])}, dst: inode{be.Uint64(rec[16:]), be.Uint64(rec[24:])}, flags: rec[32], path: rec[flagHead:]}, nil
}

func less(a, b inode) bool { return a.dev < b.dev || a.dev == b.dev && a.ino < b.ino }

// A path record: a kind byte, then the path (extras, directories to make
// or fix, touched directories).
func appendPathRec(dst []byte, kind byte, path []byte) []byte {
	return append(append(dst, kind), path...)
}
