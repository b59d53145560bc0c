// Package blockfile owns the on-disk sealing of hlcp's state files: a file
// is a sequence of blocks of Block bytes, each holding Payload bytes of
// data followed by their CRC-32C (Castagnoli), and the last block shorter.
// Readers check every block before they hand out a byte of it, so a state
// file that was cut, zeroed or bit-flipped is reported as damaged, never
// read as a shorter or different plan.
//
// Offsets given to and returned by this package are logical: positions in
// the data, not counting the checksums. Physical(n) is the file size of n
// bytes of data.
package blockfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hlcp/internal/msg"
	"io"
	"sync"
)

const (
	// Block is the size of a block on disk: a page, so that a random
	// read (the directory table's lookups) reads and checks one page.
	Block = 4096
	// Payload is the data in a full block; its CRC-32C follows.
	Payload = Block - 4
	// ioBlocks is how many blocks a sequential Reader or a Writer moves
	// per read or write call (256 KiB).
	ioBlocks = 64
)

var table = crc32.MakeTable(crc32.Castagnoli)

// ErrDamaged is wrapped by every error about a block whose checksum does
// not match, or a file whose size cannot be a sealed file's.
var ErrDamaged = errors.New("damaged")

// DamageError says where a file is damaged.
type DamageError struct {
	File   string
	Offset int64 // physical offset of the bad block
	Why    string
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("%s is damaged at byte %d: %s", msg.Quote(e.File), e.Offset, e.Why)
}

func (e *DamageError) Unwrap() error { return ErrDamaged }

// Info is what is recorded of a sealed file when it is written, and
// checked before it is used: its size on disk and how many records it
// holds.
type Info struct {
	Size    int64 `json:"size"`
	Records int64 `json:"records"`
}

// Physical is the size on disk of n bytes of data.
func Physical(n int64) int64 {
	full := n / Payload
	size := full * Block
	if rest := n % Payload; rest > 0 {
		size += rest + 4
	}
	return size
}

// Logical is the data size of a file of size bytes, and whether size is
// one that a sealed file can have.
func Logical(size int64) (int64, bool) {
	full := size / Block
	rest := size % Block
	if rest == 0 {
		return full * Payload, true
	}
	if rest <= 4 { // a last block needs at least one byte of data
		return 0, false
	}
	return full*Payload + rest - 4, true
}

// Writer seals what is written to it into blocks. Close (or Flush at the
// very end) writes the last, partial block; nothing may be written after.
type Writer struct {
	w       io.Writer
	buf     []byte // whole blocks waiting to be written, then the open block's data
	open    int    // start of the open block in buf
	written int64  // physical bytes written to w
	n       int64  // logical bytes accepted
	err     error
}

// NewWriter returns a Writer to w that writes 256 KiB at a time.
func NewWriter(w io.Writer) *Writer { return NewWriterSize(w, ioBlocks*Block) }

// NewWriterSize returns a Writer to w that writes about size bytes at a
// time (at least a block).
func NewWriterSize(w io.Writer, size int) *Writer {
	return &Writer{w: w, buf: make([]byte, 0, max(size/Block, 1)*Block)}
}

// Reset makes w a new Writer to dst, keeping its buffer.
func (w *Writer) Reset(dst io.Writer) {
	*w = Writer{w: dst, buf: w.buf[:0]}
}

// Write implements io.Writer.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	total := len(p)
	for len(p) > 0 {
		room := Payload - (len(w.buf) - w.open)
		k := min(room, len(p))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		w.n += int64(k)
		if len(w.buf)-w.open == Payload {
			w.seal()
			if len(w.buf)+Block > cap(w.buf) {
				if err := w.flushBlocks(); err != nil {
					return total - len(p), err
				}
			}
		}
	}
	return total, nil
}

func (w *Writer) seal() {
	w.buf = binary.LittleEndian.AppendUint32(w.buf, crc32.Checksum(w.buf[w.open:], table))
	w.open = len(w.buf)
}

func (w *Writer) flushBlocks() error {
	if w.open == 0 {
		return nil
	}
	k, err := w.w.Write(w.buf[:w.open])
	w.written += int64(k)
	if err == nil && k < w.open {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = err
		return err
	}
	rest := copy(w.buf, w.buf[w.open:])
	w.buf, w.open = w.buf[:rest], 0
	return nil
}

// Close seals and writes the last block (it does not close the
// underlying writer).
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) > w.open {
		w.seal()
	}
	err := w.flushBlocks()
	if err == nil {
		w.err = errors.New("blockfile: write after close")
	}
	return err
}

// Len is the number of data bytes written so far.
func (w *Writer) Len() int64 { return w.n }

// Size is the file size once Close has returned: the physical bytes.
func (w *Writer) Size() int64 { return w.written }

// Reader reads the data of a sealed file from a logical offset on,
// checking each block before it is used.
type Reader struct {
	f    Source
	name string
	size int64  // physical size of the file
	phys int64  // physical offset of the next block to read
	buf  []byte // checked data not yet returned: buf[pos:]
	pos  int
	raw  []byte
	err  error
}

// NewReader reads the sealed file f, whose size on disk is size, from the
// logical offset off on, 256 KiB at a time.
func NewReader(f Source, size, off int64) (*Reader, error) {
	return NewReaderSize(f, size, off, ioBlocks*Block)
}

// NewReaderSize is NewReader with reads of about bufSize bytes (at least
// a block).
func NewReaderSize(f Source, size, off int64, bufSize int) (*Reader, error) {
	if _, ok := Logical(size); !ok {
		return nil, &DamageError{File: f.Name(), Offset: size, Why: fmt.Sprintf("its size %d cannot be that of a sealed file (cut?)", size)}
	}
	r := &Reader{f: f, name: f.Name(), size: size, raw: make([]byte, min(int64(max(bufSize/Block, 1)*Block), max(size, Block)))}
	blk := off / Payload
	r.phys = blk * Block
	skip := int(off % Payload)
	if r.phys > size || (r.phys == size && skip > 0) {
		return nil, &DamageError{File: r.name, Offset: size, Why: fmt.Sprintf("offset %d is past its end", off)}
	}
	if skip > 0 {
		if err := r.fill(); err != nil {
			return nil, err
		}
		if skip > len(r.buf) {
			return nil, &DamageError{File: r.name, Offset: r.phys, Why: fmt.Sprintf("offset %d is past its end", off)}
		}
		r.pos = skip
	}
	return r, nil
}

// fill reads and checks the next blocks.
func (r *Reader) fill() error {
	if r.phys >= r.size {
		return io.EOF
	}
	n := min(int64(len(r.raw)), r.size-r.phys)
	raw := r.raw[:n]
	if err := preadFull(r.f, raw, r.phys); err != nil {
		if err == io.ErrUnexpectedEOF {
			return &DamageError{File: r.name, Offset: r.phys, Why: "shorter than when it was checked"}
		}
		return fmt.Errorf("read %s: %w", r.name, err)
	}
	data, err := check(raw, r.name, r.phys)
	if err != nil {
		return err
	}
	r.buf, r.pos = data, 0
	r.phys += n
	return nil
}

// check verifies the blocks of raw (whole blocks but the last), which
// start at physical offset phys, and compacts their data to the front of
// raw.
func check(raw []byte, name string, phys int64) ([]byte, error) {
	out := 0
	for i := 0; i < len(raw); i += Block {
		blk := raw[i:min(i+Block, len(raw))]
		if len(blk) <= 4 {
			return nil, &DamageError{File: name, Offset: phys + int64(i), Why: "a block too short to hold data"}
		}
		data := blk[:len(blk)-4]
		if crc32.Checksum(data, table) != binary.LittleEndian.Uint32(blk[len(data):]) {
			return nil, &DamageError{File: name, Offset: phys + int64(i), Why: "checksum mismatch"}
		}
		out += copy(raw[out:], data)
	}
	return raw[:out], nil
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.pos >= len(r.buf) {
		if err := r.fill(); err != nil {
			r.err = err
			return 0, err
		}
	}
	n := copy(p, r.buf[r.pos:])
	r.pos += n
	return n, nil
}

// File is a sealed file open for random reads (the directory table's
// lookups). Safe for concurrent use.
type File struct {
	f     Source
	size  int64
	lsize int64
	pool  sync.Pool // *[]byte scratch of 2 blocks
}

// Open checks that size (the file's size on disk, as recorded when it was
// written) is one a sealed file can have, and returns f for ReadAt.
func Open(f Source, size int64) (*File, error) {
	lsize, ok := Logical(size)
	if !ok {
		return nil, &DamageError{File: f.Name(), Offset: size, Why: fmt.Sprintf("its size %d cannot be that of a sealed file (cut?)", size)}
	}
	return &File{f: f, size: size, lsize: lsize}, nil
}

// Len is the data size.
func (b *File) Len() int64 { return b.lsize }

// Size is the size on disk.
func (b *File) Size() int64 { return b.size }

// ReadAt reads len(p) data bytes at logical offset off, checking every
// block it touches.
func (b *File) ReadAt(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > b.lsize {
		return &DamageError{File: b.f.Name(), Offset: b.size, Why: fmt.Sprintf("bytes %d..%d asked of %d", off, off+int64(len(p)), b.lsize)}
	}
	sp, _ := b.pool.Get().(*[]byte)
	if sp == nil {
		s := make([]byte, 2*Block)
		sp = &s
	}
	defer b.pool.Put(sp)
	for len(p) > 0 {
		blk := off / Payload
		phys := blk * Block
		// Up to two blocks per read.
		last := (off + int64(len(p)) - 1) / Payload
		n := min(min(last-blk+1, 2)*Block, b.size-phys)
		raw := (*sp)[:n]
		if err := preadFull(b.f, raw, phys); err != nil {
			if err == io.ErrUnexpectedEOF {
				return &DamageError{File: b.f.Name(), Offset: phys, Why: "shorter than when it was checked"}
			}
			return fmt.Errorf("read %s: %w", b.f.Name(), err)
		}
		data, err := check(raw, b.f.Name(), phys)
		if err != nil {
			return err
		}
		k := copy(p, data[off%Payload:])
		p, off = p[k:], off+int64(k)
	}
	return nil
}

// Source is what a sealed file is read from: an *os.File, or anything
// with ReadAt and a name for messages.
type Source interface {
	io.ReaderAt
	Name() string
}

func preadFull(f Source, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == io.EOF || err == nil {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Check reads the whole sealed file f of size bytes and reports the
// first damaged block.
func Check(f Source, size int64) error {
	r, err := NewReader(f, size, 0)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, r)
	return err
}
