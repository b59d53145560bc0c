package blockfile

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func writeSealed(t testing.TB, data []byte, chunk int) (*os.File, int64) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	w := NewWriter(f)
	for p := data; len(p) > 0; {
		k := min(chunk, len(p))
		if n, err := w.Write(p[:k]); err != nil || n != k {
			t.Fatalf("write: %d %v", n, err)
		}
		p = p[k:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Len() != int64(len(data)) || w.Size() != Physical(int64(len(data))) {
		t.Fatalf("len %d size %d for %d bytes (physical %d)", w.Len(), w.Size(), len(data), Physical(int64(len(data))))
	}
	fi, _ := f.Stat()
	if fi.Size() != w.Size() {
		t.Fatalf("file has %d bytes, writer says %d", fi.Size(), w.Size())
	}
	return f, w.Size()
}

func TestPhysicalLogical(t *testing.T) {
	for _, n := range []int64{0, 1, Payload - 1, Payload, Payload + 1, 3*Payload + 17, 64 * Payload} {
		p := Physical(n)
		l, ok := Logical(p)
		if !ok || l != n {
			t.Errorf("Logical(Physical(%d)=%d) = %d, %v", n, p, l, ok)
		}
	}
	for _, bad := range []int64{1, 2, 3, 4, Block + 4, 2*Block + 1} {
		if _, ok := Logical(bad); ok {
			t.Errorf("Logical(%d) accepted a size no sealed file has", bad)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, Payload - 1, Payload, Payload + 1, 5*Payload + 333, ioBlocks*Payload + 7, 3 * ioBlocks * Payload} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		for _, chunk := range []int{1, 100, Payload, 1 << 20} {
			if size > 100_000 && chunk < 100 {
				continue
			}
			f, phys := writeSealed(t, data, chunk)
			// Whole file, and from offsets inside it.
			for _, off := range []int64{0, 1, Payload - 1, Payload, int64(size) / 2, int64(size)} {
				if off > int64(size) {
					continue
				}
				r, err := NewReader(f, phys, off)
				if err != nil {
					t.Fatalf("size %d off %d: %v", size, off, err)
				}
				got, err := io.ReadAll(r)
				if err != nil || !bytes.Equal(got, data[off:]) {
					t.Fatalf("size %d chunk %d off %d: %d bytes, %v", size, chunk, off, len(got), err)
				}
			}
			bf, err := Open(f, phys)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 50 && size > 0; i++ {
				off := rng.IntN(size)
				n := rng.IntN(min(size-off, 3*Block)) + 1
				if off+n > size {
					n = size - off
				}
				p := make([]byte, n)
				if err := bf.ReadAt(p, int64(off)); err != nil || !bytes.Equal(p, data[off:off+n]) {
					t.Fatalf("ReadAt(%d, %d) of %d: %v", off, n, size, err)
				}
			}
			if err := bf.ReadAt(make([]byte, 2), int64(size)-1); !errors.Is(err, ErrDamaged) {
				t.Errorf("ReadAt past the end: %v", err)
			}
		}
	}
}

// TestDamage: every single-byte change, every cut and a zeroed block are
// reported as damage, never read as other data.
func TestDamage(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*Payload/16+5)
	f, phys := writeSealed(t, data, 4096)
	orig, _ := os.ReadFile(f.Name())
	readAll := func(b []byte) error {
		g, err := os.CreateTemp(t.TempDir(), "d")
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		g.Write(b)
		r, err := NewReader(g, int64(len(b)), 0)
		if err != nil {
			return err
		}
		got, err := io.ReadAll(r)
		if err == nil && !bytes.Equal(got, data) {
			return errOther
		}
		return err
	}
	if err := readAll(orig); err != nil {
		t.Fatal(err)
	}
	for _, at := range []int{0, 100, Block - 4, Block - 1, Block, 2*Block + 7, len(orig) - 1} {
		b := bytes.Clone(orig)
		b[at] ^= 0x20
		if err := readAll(b); !errors.Is(err, ErrDamaged) {
			t.Errorf("flip at %d: %v", at, err)
		}
	}
	for _, cut := range []int{0 + 1, Block, Block + 3, Block + 100, len(orig) - 1} {
		if err := readAll(orig[:cut]); !errors.Is(err, ErrDamaged) {
			// A cut at a block boundary is a valid, shorter file: the
			// size recorded in the journal is what catches it.
			if cut%Block == 0 && err == errOther {
				continue
			}
			t.Errorf("cut at %d: %v", cut, err)
		}
	}
	b := bytes.Clone(orig)
	clear(b[Block : 2*Block])
	if err := readAll(b); !errors.Is(err, ErrDamaged) {
		t.Errorf("zeroed block: %v", err)
	}
	// A reader that was given the recorded size sees a later cut.
	r, err := NewReader(f, phys, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(Block)
	if _, err := io.ReadAll(r); !errors.Is(err, ErrDamaged) {
		t.Errorf("cut after open: %v", err)
	}
}

var errOther = errors.New("read as other data without an error")

type named struct{ *bytes.Reader }

func (named) Name() string { return "fuzz" }

// FuzzReader: whatever the bytes of a file, a reader returns either an
// error or data whose every block checked out, and never panics.
func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Write(bytes.Repeat([]byte("abc"), 3000))
	w.Close()
	f.Add(buf.Bytes(), int64(0))
	f.Add(buf.Bytes()[:100], int64(5))
	f.Add([]byte{1, 2, 3, 4, 5}, int64(0))
	f.Fuzz(func(t *testing.T, b []byte, off int64) {
		g := named{bytes.NewReader(b)}
		if off < 0 {
			off = -off
		}
		r, err := NewReader(g, int64(len(b)), off%(int64(len(b))+2))
		if err == nil {
			io.ReadAll(r)
		}
		if bf, err := Open(g, int64(len(b))); err == nil && bf.Len() > 0 {
			p := make([]byte, min(bf.Len(), 100))
			bf.ReadAt(p, 0)
		}
	})
}
