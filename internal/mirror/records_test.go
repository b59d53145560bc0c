package mirror

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/differ"
	"hlcp/internal/fsx"
)

// ---- helpers ----

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

// longPath is a path of more than 4096 bytes (PATH_MAX), in components.
var longPath = []byte(strings.Repeat("component-with-a-long-name/", 200) + "leaf")

// testPaths are the paths every codec must carry unchanged.
var testPaths = [][]byte{
	[]byte("a"),
	[]byte("dir/sub/file.txt"),
	[]byte("new\nline/and\ttab"),
	[]byte("caf\xe9/\xff\xfe/latin1"), // not UTF-8
	[]byte("trailing space "),
	[]byte("-leading-dash"),
	longPath,
}

// decisionEqual compares two decisions, nil and empty paths alike.
func decisionEqual(a, b decision) bool {
	return a.src == b.src && a.typ == b.typ && a.keep == b.keep && a.metaFix == b.metaFix &&
		bytes.Equal(a.keepPath, b.keepPath) && bytes.Equal(a.reuse, b.reuse) && bytes.Equal(a.first, b.first)
}

// ---- decisions ----

func TestDecisionRoundTrip(t *testing.T) {
	max := ^uint64(0)
	cases := []struct {
		name string
		d    decision
	}{
		{"zero", decision{}},
		{"all fields", decision{src: inode{1, 2}, typ: fsx.TypeReg, keep: inode{3, 4}, keepPath: []byte("k/p"), metaFix: true, reuse: []byte("\x00held/.hlcp-sync-1-2"), first: []byte("f")}},
		{"no keep", decision{src: inode{7, 8}, typ: fsx.TypeLnk, first: []byte("link")}},
		{"occupied only (type unknown)", decision{src: inode{7, 9}, typ: 0, first: []byte("x/y")}},
		{"max inodes", decision{src: inode{max, max}, typ: 0xff, keep: inode{max, max - 1}, keepPath: []byte("a")}},
		{"empty paths, meta fix", decision{src: inode{1, 1}, keep: inode{1, 2}, metaFix: true}},
		{"long paths", decision{src: inode{5, 6}, typ: fsx.TypeReg, keep: inode{5, 7}, keepPath: longPath, reuse: longPath[:4097], first: longPath[1:]}},
	}
	for _, p := range testPaths {
		cases = append(cases, struct {
			name string
			d    decision
		}{"path " + string(p[:min(len(p), 16)]), decision{src: inode{9, 9}, typ: fsx.TypeReg, keep: inode{9, 10}, keepPath: p, reuse: p, first: p}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := c.d.append([]byte("prefix"))
			if string(rec[:6]) != "prefix" {
				t.Fatalf("append overwrote what dst held: %q", rec[:6])
			}
			rec = rec[6:]
			got, err := decodeDecision(rec)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !decisionEqual(got, c.d) {
				t.Fatalf("round trip: got %+v, want %+v", got, c.d)
			}
			if again := got.append(nil); !bytes.Equal(again, rec) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, rec)
			}
			// Every proper prefix is a truncated record: an error, no panic.
			for n := range len(rec) {
				if n > 64 && n < len(rec)-64 && n%97 != 0 {
					continue // long records: the ends and a sample of the middle
				}
				if _, err := decodeDecision(rec[:n]); err == nil {
					t.Fatalf("record truncated to %d of %d bytes decoded", n, len(rec))
				}
			}
		})
	}
}

func TestDecodeDecisionCorrupt(t *testing.T) {
	head := (&decision{src: inode{1, 2}, keep: inode{3, 4}}).append(nil)[:34]
	cases := []struct {
		name string
		rec  []byte
	}{
		{"empty", nil},
		{"head only", head},
		{"short head", head[:33]},
		{"one length of three", append(slices.Clone(head), 0)},
		{"two lengths of three", append(slices.Clone(head), 0, 0)},
		{"length past the end", append(slices.Clone(head), 5, 'a', 'b', 0, 0)},
		{"last length past the end", append(slices.Clone(head), 0, 0, 1)},
		{"varint unterminated", append(slices.Clone(head), 0x80)},
		{"varint overflow", append(slices.Clone(head), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
		{"huge length", binary.AppendUvarint(slices.Clone(head), ^uint64(0))},
		{"length wraps int", binary.AppendUvarint(slices.Clone(head), 1<<63)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if d, err := decodeDecision(c.rec); err == nil {
				t.Fatalf("corrupt record %x decoded: %+v", c.rec, d)
			}
		})
	}
}

// ---- flags ----

func TestFlagRoundTrip(t *testing.T) {
	max := ^uint64(0)
	cases := []struct {
		name     string
		src, dst inode
		flags    uint8
		path     []byte
	}{
		{"pair, no path", inode{1, 2}, inode{3, 4}, flagMeta, nil},
		{"all flags", inode{1, 2}, inode{3, 4}, flagContent | flagMeta | flagJoined | flagOccupied, nil},
		{"occupied", inode{1, 2}, inode{absentNode.Dev, absentNode.Ino}, flagOccupied, []byte("x/y")},
		{"claim (paths count as the path)", inode{5, 6}, inode{7, 8}, 0, binary.BigEndian.AppendUint64(nil, 3)},
		{"max", inode{max, max}, inode{max, max}, 0xff, []byte("p")},
	}
	for _, p := range testPaths {
		cases = append(cases, struct {
			name     string
			src, dst inode
			flags    uint8
			path     []byte
		}{"path " + string(p[:min(len(p), 16)]), inode{9, 9}, inode{absentNode.Dev, absentNode.Ino}, flagOccupied, p})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := appendFlag([]byte("xy"), c.src, c.dst, c.flags, c.path)
			if string(rec[:2]) != "xy" {
				t.Fatalf("append overwrote what dst held")
			}
			rec = rec[2:]
			if len(rec) != flagHead+len(c.path) {
				t.Fatalf("record of %d bytes, want %d", len(rec), flagHead+len(c.path))
			}
			f, err := decodeFlag(rec)
			if err != nil {
				t.Fatal(err)
			}
			if f.src != c.src || f.dst != c.dst || f.flags != c.flags || !bytes.Equal(f.path, c.path) {
				t.Fatalf("round trip: got %+v", f)
			}
			if again := appendFlag(nil, f.src, f.dst, f.flags, f.path); !bytes.Equal(again, rec) {
				t.Fatalf("re-encoding differs")
			}
			for n := range flagHead {
				if _, err := decodeFlag(rec[:n]); err == nil {
					t.Fatalf("record truncated to %d bytes decoded", n)
				}
			}
		})
	}
}

// TestFlagOrder: the byte order of flag records (the sort's) is the order
// of (source inode, destination inode) that the group walk expects, and an
// occupied path sorts after every pair of its source inode.
func TestFlagOrder(t *testing.T) {
	r := newRand(1)
	vals := []uint64{0, 1, 2, 255, 256, 1 << 32, 1<<63 - 1, 1 << 63, ^uint64(0) - 1}
	pick := func() inode { return inode{vals[r.IntN(len(vals))], vals[r.IntN(len(vals))]} }
	for range 2000 {
		s1, d1, s2, d2 := pick(), pick(), pick(), pick()
		a := appendFlag(nil, s1, d1, uint8(r.IntN(16)), nil)
		b := appendFlag(nil, s2, d2, uint8(r.IntN(16)), nil)
		var want int
		switch {
		case less(s1, s2) || s1 == s2 && less(d1, d2):
			want = -1
		case less(s2, s1) || s1 == s2 && less(d2, d1):
			want = 1
		}
		if got := bytes.Compare(a, b); want != 0 && got != want {
			t.Fatalf("(%v,%v) vs (%v,%v): bytes order %d, inode order %d", s1, d1, s2, d2, got, want)
		}
		occ := appendFlag(nil, s1, inode{absentNode.Dev, absentNode.Ino}, flagOccupied, []byte("p"))
		if d1 != (inode{absentNode.Dev, absentNode.Ino}) && bytes.Compare(a, occ) >= 0 {
			t.Fatalf("occupied path of %v sorts before its pair with %v", s1, d1)
		}
	}
}

// ---- groups ----

func TestGroupRoundTrip(t *testing.T) {
	cases := []struct {
		name   string
		p      differ.Pair
		dst    inode
		absent bool
	}{
		{"present", differ.Pair{Path: []byte("a"), Src: differ.Node{Type: fsx.TypeReg, Dev: 1, Ino: 2}, Dst: differ.Node{Type: fsx.TypeReg, Dev: 3, Ino: 4}}, inode{3, 4}, false},
		{"absent", differ.Pair{Path: []byte("a"), Src: differ.Node{Type: fsx.TypeLnk, Dev: 1, Ino: 2}}, inode{absentNode.Dev, absentNode.Ino}, true},
		{"dst of another type", differ.Pair{Path: []byte("b"), Src: differ.Node{Type: fsx.TypeReg, Dev: 1, Ino: 2}, Dst: differ.Node{Type: fsx.TypeDir, Dev: 1, Ino: 9}}, inode{1, 9}, false},
		{"dst on the last device is present", differ.Pair{Path: []byte("d"), Src: differ.Node{Type: fsx.TypeReg, Dev: 1, Ino: 2}, Dst: differ.Node{Type: fsx.TypeReg, Dev: ^uint64(0), Ino: 5}}, inode{^uint64(0), 5}, false},
		{"dst ino all ones on another device is present", differ.Pair{Path: []byte("e"), Src: differ.Node{Type: fsx.TypeReg, Dev: 1, Ino: 2}, Dst: differ.Node{Type: fsx.TypeReg, Dev: 7, Ino: ^uint64(0)}}, inode{7, ^uint64(0)}, false},
		{"dst ino 0 with a type is present", differ.Pair{Path: []byte("c"), Src: differ.Node{Type: fsx.TypeReg, Dev: 1, Ino: 2}, Dst: differ.Node{Type: fsx.TypeReg}}, inode{0, 0}, false},
	}
	for _, p := range testPaths {
		cases = append(cases, struct {
			name   string
			p      differ.Pair
			dst    inode
			absent bool
		}{"path " + string(p[:min(len(p), 16)]), differ.Pair{Path: p, Src: differ.Node{Type: fsx.TypeReg, Dev: 5, Ino: 6}, Dst: differ.Node{Type: fsx.TypeReg, Dev: 5, Ino: 7}}, inode{5, 7}, false})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := appendGroup([]byte("z"), c.p)[1:]
			if len(rec) != groupHead+len(c.p.Path) {
				t.Fatalf("record of %d bytes, want %d", len(rec), groupHead+len(c.p.Path))
			}
			g, err := decodeGroup(rec)
			if err != nil {
				t.Fatal(err)
			}
			if g.typ != c.p.Src.Type || g.src != (inode{c.p.Src.Dev, c.p.Src.Ino}) || g.dst != c.dst || g.absent != c.absent || !bytes.Equal(g.path, c.p.Path) {
				t.Fatalf("round trip: got %+v", g)
			}
			for n := range groupHead + 1 {
				if _, err := decodeGroup(rec[:n]); err == nil {
					t.Fatalf("record truncated to %d bytes decoded", n)
				}
			}
		})
	}
	// A group is a path of a non-directory: never the root, so a record
	// with no path is refused.
	if g, err := decodeGroup(appendGroup(nil, differ.Pair{Src: differ.Node{Type: fsx.TypeReg, Dev: 1, Ino: 1}})); err == nil {
		t.Errorf("group record with an empty path decoded: %+v", g)
	}
}

// TestGroupOrder: group records in byte order are in (source inode,
// destination inode, path) order, an absent path after every present one.
func TestGroupOrder(t *testing.T) {
	node := func(dev, ino uint64) differ.Node { return differ.Node{Type: fsx.TypeReg, Dev: dev, Ino: ino} }
	ordered := []differ.Pair{
		{Path: []byte("z"), Src: node(1, 1), Dst: node(0, 5)},
		{Path: []byte("a"), Src: node(1, 1), Dst: node(1, 0)},
		{Path: []byte("b"), Src: node(1, 1), Dst: node(1, 0)},
		{Path: []byte("b\x01"), Src: node(1, 1), Dst: node(1, 0)},
		{Path: []byte("a"), Src: node(1, 1), Dst: node(1, 1<<40)},
		{Path: []byte("a"), Src: node(1, 1)}, // absent
		{Path: []byte("b"), Src: node(1, 1)},
		{Path: []byte("a"), Src: node(1, 2), Dst: node(0, 1)},
		{Path: []byte("a"), Src: node(2, 0)},
	}
	for i := 1; i < len(ordered); i++ {
		a, b := appendGroup(nil, ordered[i-1]), appendGroup(nil, ordered[i])
		if bytes.Compare(a[1:], b[1:]) >= 0 {
			t.Errorf("group %d (%+v) does not sort before %d (%+v)", i-1, ordered[i-1], i, ordered[i])
		}
	}
}

// ---- path and size records ----

func TestPathRec(t *testing.T) {
	kinds := []byte{kindMake, kindReplace, kindFix, fsx.TypeReg, fsx.TypeDir | underReplaced}
	paths := append([][]byte{nil}, testPaths...)
	for _, k := range kinds {
		for _, p := range paths {
			rec := appendPathRec([]byte("keep"), k, p)
			if string(rec[:4]) != "keep" {
				t.Fatalf("append overwrote what dst held")
			}
			rec = rec[4:]
			if len(rec) != 1+len(p) || rec[0] != k || !bytes.Equal(rec[1:], p) {
				t.Fatalf("kind %#x path %q: record %q", k, p, rec)
			}
		}
	}
	// The mark of a path below a replaced directory comes off again.
	rec := appendPathRec(nil, fsx.TypeReg|underReplaced, []byte("d/f"))
	if rec[0]&^underReplaced != fsx.TypeReg || rec[0]&underReplaced == 0 {
		t.Errorf("type byte %#x", rec[0])
	}
	for _, typ := range []byte{fsx.TypeFifo, fsx.TypeChr, fsx.TypeDir, fsx.TypeBlk, fsx.TypeReg, fsx.TypeLnk, fsx.TypeSock} {
		if typ&underReplaced != 0 {
			t.Errorf("type %d has the underReplaced bit", typ)
		}
	}
}

// readSize decodes a size record as pairSizes and freeInodes read it.
func readSize(b []byte) (key []byte, side byte, n inode, path []byte) {
	be := binary.BigEndian
	return b[:20], b[20], inode{be.Uint64(b[21:]), be.Uint64(b[29:])}, b[sizeHead:]
}

func TestSizeRecord(t *testing.T) {
	cases := []struct {
		size int64
		mt   unix.Timespec
		side byte
		n    inode
		path []byte
	}{
		{0, unix.Timespec{}, 0, inode{}, nil},
		{minReuse, unix.Timespec{Sec: 1700000000, Nsec: 999999999}, 1, inode{1, 2}, []byte("a/b")},
		{1 << 50, unix.Timespec{Sec: 1, Nsec: 1}, 0, inode{^uint64(0), 3}, longPath},
		{5, unix.Timespec{Sec: 2}, 1, inode{4, 4}, []byte("caf\xe9\n")},
	}
	for _, c := range cases {
		rec := appendSize([]byte("pre"), c.size, c.mt, c.side, c.n, c.path)[3:]
		if len(rec) != sizeHead+len(c.path) {
			t.Fatalf("record of %d bytes, want %d", len(rec), sizeHead+len(c.path))
		}
		key, side, n, path := readSize(rec)
		be := binary.BigEndian
		if int64(be.Uint64(key)) != c.size || int64(be.Uint64(key[8:])) != c.mt.Sec || int64(be.Uint32(key[16:])) != c.mt.Nsec {
			t.Errorf("key %x of size %d mtime %v", key, c.size, c.mt)
		}
		if side != c.side || n != c.n || !bytes.Equal(path, c.path) {
			t.Errorf("size record %+v: side %d inode %v path %q", c, side, n, path)
		}
	}
	// Sorted, the records are by size, then mtime, and the source inodes
	// (side 0) come before DST's of the same size and mtime.
	ordered := [][]byte{
		appendSize(nil, 1, unix.Timespec{Sec: 9, Nsec: 9}, 1, inode{0, 0}, []byte("z")),
		appendSize(nil, 2, unix.Timespec{Sec: 1, Nsec: 0}, 1, inode{0, 0}, []byte("z")),
		appendSize(nil, 2, unix.Timespec{Sec: 1, Nsec: 5}, 0, inode{9, 9}, []byte("z")),
		appendSize(nil, 2, unix.Timespec{Sec: 1, Nsec: 5}, 1, inode{0, 0}, []byte("a")),
		appendSize(nil, 2, unix.Timespec{Sec: 2, Nsec: 0}, 0, inode{0, 0}, []byte("a")),
		appendSize(nil, 1<<40, unix.Timespec{}, 0, inode{0, 0}, nil),
	}
	for i := 1; i < len(ordered); i++ {
		if bytes.Compare(ordered[i-1], ordered[i]) >= 0 {
			t.Errorf("size record %d does not sort before %d", i-1, i)
		}
	}
}

// ---- fuzz: every decoder of a record read back from disk ----

func FuzzDecodeDecision(f *testing.F) {
	f.Add((&decision{}).append(nil))
	f.Add((&decision{src: inode{1, 2}, typ: fsx.TypeReg, keep: inode{3, 4}, keepPath: []byte("k"), metaFix: true, reuse: []byte("\x00held/x"), first: []byte("new\nline")}).append(nil))
	f.Add((&decision{src: inode{1, 2}, first: longPath[:300]}).append(nil))
	f.Add(append((&decision{}).append(nil), 'x'))
	f.Fuzz(func(t *testing.T, rec []byte) {
		d, err := decodeDecision(rec)
		if err != nil {
			return
		}
		enc := d.append(nil)
		d2, err := decodeDecision(enc)
		if err != nil || !decisionEqual(d, d2) {
			t.Fatalf("re-encoded %x decodes to %+v, %v; want %+v", enc, d2, err, d)
		}
		// The format is canonical when the meta-fix byte is 0 or 1, the
		// lengths are minimal varints and nothing trails: the encoder
		// writes minimal varints, so then the lengths match.
		if rec[33] <= 1 && len(enc) == len(rec) && !bytes.Equal(enc, rec) {
			t.Fatalf("canonical record %x re-encodes as %x", rec, enc)
		}
		if len(enc) > len(rec) {
			t.Fatalf("re-encoding %x is longer than the record %x", enc, rec)
		}
	})
}

func FuzzDecodeFlag(f *testing.F) {
	f.Add(appendFlag(nil, inode{1, 2}, inode{3, 4}, flagMeta, nil))
	f.Add(appendFlag(nil, inode{1, 2}, inode{absentNode.Dev, absentNode.Ino}, flagOccupied, []byte("caf\xe9\nx")))
	f.Add(appendFlag(nil, inode{5, 6}, inode{7, 8}, 0, binary.BigEndian.AppendUint64(nil, 2)))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, rec []byte) {
		g, err := decodeFlag(rec)
		if (err == nil) != (len(rec) >= flagHead) {
			t.Fatalf("record of %d bytes: err %v", len(rec), err)
		}
		if err != nil {
			return
		}
		if enc := appendFlag(nil, g.src, g.dst, g.flags, g.path); !bytes.Equal(enc, rec) {
			t.Fatalf("%x re-encodes as %x", rec, enc)
		}
	})
}

func FuzzDecodeGroup(f *testing.F) {
	f.Add(appendGroup(nil, differ.Pair{Path: []byte("a"), Src: differ.Node{Type: fsx.TypeReg, Dev: 1, Ino: 2}, Dst: differ.Node{Type: fsx.TypeReg, Dev: 3, Ino: 4}}))
	f.Add(appendGroup(nil, differ.Pair{Path: []byte("new\nline/\xff"), Src: differ.Node{Type: fsx.TypeLnk, Dev: 1, Ino: 2}}))
	f.Add(appendGroup(nil, differ.Pair{Src: differ.Node{Type: fsx.TypeReg, Dev: 1, Ino: 2}}))
	f.Fuzz(func(t *testing.T, rec []byte) {
		g, err := decodeGroup(rec)
		if (err == nil) != (len(rec) > groupHead) {
			t.Fatalf("record of %d bytes: err %v", len(rec), err)
		}
		if err != nil {
			return
		}
		if g.absent != (g.dst == inode{absentNode.Dev, absentNode.Ino}) {
			t.Fatalf("absent %v for dst %v", g.absent, g.dst)
		}
		p := differ.Pair{Path: g.path, Src: differ.Node{Type: g.typ, Dev: g.src.dev, Ino: g.src.ino}}
		if !g.absent {
			// A present DST path has a type (the differ's Node): a zero
			// Node is how the differ says absent.
			p.Dst = differ.Node{Type: fsx.TypeReg, Dev: g.dst.dev, Ino: g.dst.ino}
		}
		if enc := appendGroup(nil, p); !bytes.Equal(enc, rec) {
			t.Fatalf("%x re-encodes as %x", rec, enc)
		}
	})
}

// FuzzInverted: a record of the touched sort decodes to the path it was
// made from, whatever the path's bytes (no NUL: paths hold none), and a
// well-formed record re-encodes to itself.
func FuzzInverted(f *testing.F) {
	f.Add(invert([]byte("a/b"), markTouched))
	f.Add(invert(nil, markDiffers))
	f.Add(invert([]byte("caf\xe9/new\nline"), markDiffers))
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, rec []byte) {
		if len(rec) < 2 {
			return // inverted needs its two trailing bytes (see the report on short records)
		}
		p := inverted(rec)
		if len(p) != len(rec)-2 {
			t.Fatalf("decoded %d bytes from a record of %d", len(p), len(rec))
		}
		for i := range p {
			if p[i] != ^rec[i] {
				t.Fatalf("byte %d: %#x from %#x", i, p[i], rec[i])
			}
		}
		if rec[len(rec)-2] == 0xff && bytes.IndexByte(p, 0) < 0 {
			if enc := invert(p, rec[len(rec)-1]); !bytes.Equal(enc, rec) {
				t.Fatalf("%x re-encodes as %x", rec, enc)
			}
		}
		// And the other way: any path without NUL comes back.
		q := bytes.ReplaceAll(rec, []byte{0}, []byte{1})
		if got := inverted(invert(q, markTouched)); !bytes.Equal(got, q) {
			t.Fatalf("path %q comes back as %q", q, got)
		}
	})
}
