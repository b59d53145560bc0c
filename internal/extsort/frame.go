package extsort

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxRecord is the largest record accepted (bytes).
const MaxRecord = 64 << 10

// maxFrame is the largest frame a Reader ever needs to hold in its buffer: a
// (possibly non-canonical) uvarint header plus a MaxRecord payload.
const maxFrame = binary.MaxVarintLen64 + MaxRecord

// ErrBadFrame is wrapped by the errors of a stream whose framing is wrong:
// a bad header, a length above MaxRecord, a frame cut by the end.
var ErrBadFrame = errors.New("bad frame")

// minReaderBuf is the smallest buffer NewReader uses.
const minReaderBuf = 64

// AppendFrame appends rec framed as uvarint(len(rec)) followed by rec to dst
// and returns the extended slice. This is the framing of run files and of
// Merge output.
func AppendFrame(dst, rec []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(rec)))
	return append(dst, rec...)
}

// Reader reads framed records (see AppendFrame) from an io.Reader. Records are
// returned as slices of an internal buffer, so reading does not allocate per
// record. The buffer starts at the size given to NewReader and grows, only when
// a frame does not fit, to at most MaxRecord plus the header.
type Reader struct {
	r     io.Reader
	buf   []byte
	start int   // buf[start:end] holds bytes read but not yet consumed
	end   int   //
	off   int64 // stream offset of buf[start]
	err   error // sticky error from r (io.EOF included)
	done  error // sticky error returned by Next
}

// NewReader returns a Reader of framed records from r using a buffer of
// bufSize bytes (raised to a small minimum).
func NewReader(r io.Reader, bufSize int) *Reader {
	if bufSize < minReaderBuf {
		bufSize = minReaderBuf
	}
	return &Reader{r: r, buf: make([]byte, bufSize)}
}

// Offset is the number of bytes of the stream consumed so far, i.e. the offset
// of the start of the next frame.
func (r *Reader) Offset() int64 { return r.off }

// Next returns the next record. The slice is valid until the next call to
// Next. It returns io.EOF at a clean end of the stream (between frames), an
// error wrapping io.ErrUnexpectedEOF if the stream ends inside a frame, and an
// error if a frame header is malformed or announces more than MaxRecord bytes.
// Errors are sticky.
func (r *Reader) Next() ([]byte, error) {
	if r.done != nil {
		return nil, r.done
	}
	need := 1 // bytes that must be buffered before parsing can progress
	for {
		if r.end-r.start >= need {
			n, k := binary.Uvarint(r.buf[r.start:r.end])
			switch {
			case k < 0:
				return nil, r.fail(fmt.Errorf("extsort: %w: bad header at offset %d", ErrBadFrame, r.off))
			case k == 0:
				// Header incomplete: need at least one more byte.
				need = r.end - r.start + 1
			case n > MaxRecord:
				return nil, r.fail(fmt.Errorf("extsort: %w: frame at offset %d has length %d > MaxRecord", ErrBadFrame, r.off, n))
			default:
				size := k + int(n)
				if r.end-r.start >= size {
					rec := r.buf[r.start+k : r.start+size : r.start+size]
					r.start += size
					r.off += int64(size)
					return rec, nil
				}
				need = size
			}
		}
		if err := r.fill(need); err != nil {
			return nil, r.fail(err)
		}
	}
}

func (r *Reader) fail(err error) error {
	r.done = err
	return err
}

// fill reads until at least need bytes are buffered. need never exceeds
// maxFrame.
func (r *Reader) fill(need int) error {
	if need > len(r.buf) {
		size := max(2*len(r.buf), need)
		size = min(size, maxFrame)
		nb := make([]byte, size)
		r.end = copy(nb, r.buf[r.start:r.end])
		r.start = 0
		r.buf = nb
	} else if r.start+need > len(r.buf) {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
	empty := 0
	for r.end-r.start < need {
		if r.err != nil {
			if r.err == io.EOF {
				if r.end == r.start {
					return io.EOF
				}
				return fmt.Errorf("extsort: %w: truncated frame at offset %d: %w", ErrBadFrame, r.off, io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("extsort: read at offset %d: %w", r.off+int64(r.end-r.start), r.err)
		}
		n, err := r.r.Read(r.buf[r.end:])
		if n < 0 || n > len(r.buf)-r.end {
			return errors.New("extsort: reader returned invalid count")
		}
		r.end += n
		r.err = err
		if n == 0 && err == nil {
			if empty++; empty >= 100 {
				r.err = io.ErrNoProgress
			}
		}
	}
	return nil
}
