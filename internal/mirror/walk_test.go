package mirror

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"hlcp/internal/differ"
	"hlcp/internal/fsx"
)

// ---- helpers ----

// recSource is a source of the records of a slice. Like a reader's, the
// record it returns is valid until the next call only: the next call
// overwrites it.
type recSource struct {
	recs [][]byte
	err  error // returned after the records (nil: io.EOF)
	i    int
	buf  []byte
}

func (s *recSource) next() ([]byte, error) {
	for i := range s.buf {
		s.buf[i] = 0xa5 // what the caller kept of the last record is gone
	}
	if s.i >= len(s.recs) {
		if s.err != nil {
			return nil, s.err
		}
		return nil, io.EOF
	}
	s.buf = append(s.buf[:0], s.recs[s.i]...)
	s.i++
	return s.buf, nil
}

func src(recs ...[]byte) *recSource { return &recSource{recs: recs} }

// absent is the destination inode of a group record DST lacks.
var absent = inode{absentNode.Dev, absentNode.Ino}

// Inodes of the scenarios: sources S*, destinations X < Y < Z. S3 is on
// a higher device with a lower inode number: devices order first.
var (
	s1, s2, s3 = inode{1, 100}, inode{1, 200}, inode{2, 1}
	x, y, z    = inode{9, 10}, inode{9, 20}, inode{10, 5}
)

// grp is a group record: a path of source inode s (of type typ) where
// DST has inode d (absent: DST lacks the path).
func grp(typ uint8, s, d inode, path string) []byte {
	p := differ.Pair{Path: []byte(path), Src: differ.Node{Type: typ, Dev: s.dev, Ino: s.ino}}
	if d != absent {
		p.Dst = differ.Node{Type: typ, Dev: d.dev, Ino: d.ino}
	}
	return appendGroup(nil, p)
}

func reg(s, d inode, path string) []byte { return grp(fsx.TypeReg, s, d, path) }

// flg is a flag record of the pair (s, d); occ one of a path of s where
// DST has another type.
func flg(s, d inode, flags uint8) []byte { return appendFlag(nil, s, d, flags, nil) }
func occ(s inode, path string) []byte {
	return appendFlag(nil, s, absent, flagOccupied, []byte(path))
}

// nodeStr names an inode in the recorder's calls: dev:ino, or "-".
func nodeStr(n inode) string {
	if n == absent {
		return "-"
	}
	return fmt.Sprintf("%d:%d", n.dev, n.ino)
}

// recorder is a visitor that writes down its calls.
type recorder struct {
	ev     []string
	failAt string // at or occupied of this path fails
}

var errVisit = errors.New("visitor failed")

func (r *recorder) begin(s inode, typ uint8) error {
	r.ev = append(r.ev, fmt.Sprintf("begin %s typ=%d", nodeStr(s), typ))
	return nil
}
func (r *recorder) at(path []byte, d inode, abs bool, flags uint8) error {
	if abs != (d == absent) {
		r.ev = append(r.ev, fmt.Sprintf("BAD absent=%v for %s", abs, nodeStr(d)))
	}
	r.ev = append(r.ev, fmt.Sprintf("at %s %s flags=%d", path, nodeStr(d), flags))
	if string(path) == r.failAt {
		return errVisit
	}
	return nil
}
func (r *recorder) occupied(path []byte) error {
	r.ev = append(r.ev, fmt.Sprintf("occupied %s", path))
	if string(path) == r.failAt {
		return errVisit
	}
	return nil
}
func (r *recorder) end() error { r.ev = append(r.ev, "end"); return nil }

func walkAll(t *testing.T, v groupVisitor, groups, flags source) error {
	t.Helper()
	w, err := newGroupWalker(groups, flags)
	if err != nil {
		return err
	}
	return w.walk(v)
}

// ---- the group walk ----

func TestGroupWalk(t *testing.T) {
	R := fsx.TypeReg
	cases := []struct {
		name          string
		groups, flags [][]byte
		want          []string
	}{
		{"nothing", nil, nil, nil},
		{"one inode all clean",
			[][]byte{reg(s1, x, "a"), reg(s1, x, "b")}, nil,
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:10 flags=0", "at b 9:10 flags=0", "end"}},
		{"a path absent in DST",
			[][]byte{reg(s1, x, "a"), reg(s1, absent, "b")}, nil,
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:10 flags=0", "at b - flags=0", "end"}},
		{"content differs",
			[][]byte{reg(s1, x, "a"), reg(s1, x, "b")}, [][]byte{flg(s1, x, flagContent)},
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:10 flags=1", "at b 9:10 flags=1", "end"}},
		{"two DST inodes, each its flags",
			[][]byte{reg(s1, x, "a"), reg(s1, y, "b"), reg(s1, y, "c")},
			[][]byte{flg(s1, x, flagMeta), flg(s1, y, flagContent)},
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:10 flags=2", "at b 9:20 flags=1", "at c 9:20 flags=1", "end"}},
		{"flags of a pair repeat and add up",
			[][]byte{reg(s1, x, "a")},
			[][]byte{flg(s1, x, flagContent), flg(s1, x, flagMeta), flg(s1, x, flagMeta), flg(s1, x, flagJoined)},
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:10 flags=7", "end"}},
		{"an occupied path only",
			nil, [][]byte{occ(s1, "p")},
			[]string{"begin 1:100 typ=0", "occupied p", "end"}},
		{"occupied paths after the paths, not flags of the absent ones",
			[][]byte{reg(s1, x, "a"), reg(s1, absent, "c")},
			[][]byte{flg(s1, x, flagMeta), occ(s1, "b"), occ(s1, "d")},
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:10 flags=2", "at c - flags=0", "occupied b", "occupied d", "end"}},
		{"flags of pairs the groups no longer have",
			[][]byte{reg(s1, y, "a")},
			[][]byte{flg(s1, x, flagContent), flg(s1, z, flagContent|flagMeta)},
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:20 flags=0", "end"}},
		{"a stale pair between two kept ones",
			[][]byte{reg(s1, x, "a"), reg(s1, z, "b")},
			[][]byte{flg(s1, y, flagContent), flg(s1, z, flagMeta)},
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:10 flags=0", "at b 10:5 flags=2", "end"}},
		{"flags of a source inode the groups do not have",
			[][]byte{reg(s2, x, "a")},
			[][]byte{flg(s1, x, flagContent)},
			[]string{"begin 1:100 typ=0", "end", fmt.Sprintf("begin 1:200 typ=%d", R), "at a 9:10 flags=0", "end"}},
		{"source inodes in order, from either stream",
			[][]byte{grp(fsx.TypeLnk, s1, x, "l"), reg(s3, y, "r1"), reg(s3, absent, "r2")},
			[][]byte{flg(s1, x, flagMeta), occ(s2, "o"), flg(s3, y, flagContent), occ(s3, "r3")},
			[]string{
				fmt.Sprintf("begin 1:100 typ=%d", fsx.TypeLnk), "at l 9:10 flags=2", "end",
				"begin 1:200 typ=0", "occupied o", "end",
				fmt.Sprintf("begin 2:1 typ=%d", R), "at r1 9:20 flags=1", "at r2 - flags=0", "occupied r3", "end",
			}},
		{"occupied paths of a later inode after the groups end",
			[][]byte{reg(s1, x, "a")},
			[][]byte{occ(s2, "b"), occ(s3, "c")},
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at a 9:10 flags=0", "end", "begin 1:200 typ=0", "occupied b", "end", "begin 2:1 typ=0", "occupied c", "end"}},
		{"paths with odd bytes",
			[][]byte{reg(s1, x, "new\nline"), reg(s1, x, "caf\xe9")}, [][]byte{occ(s1, "sp ace")},
			[]string{fmt.Sprintf("begin 1:100 typ=%d", R), "at new\nline 9:10 flags=0", "at caf\xe9 9:10 flags=0", "occupied sp ace", "end"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{}
			if err := walkAll(t, r, src(c.groups...), src(c.flags...)); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(r.ev, c.want) {
				t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(r.ev, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestGroupWalkErrors(t *testing.T) {
	errRead := errors.New("read failed")
	cases := []struct {
		name          string
		groups, flags *recSource
		failAt        string
		want          error // nil: any error
		notAfter      string
	}{
		{"group read error", &recSource{recs: [][]byte{reg(s1, x, "a")}, err: errRead}, src(), "", errRead, ""},
		{"flag read error", src(reg(s1, x, "a"), reg(s2, x, "b")), &recSource{recs: [][]byte{flg(s1, x, flagMeta)}, err: errRead}, "", errRead, "at b"},
		{"first group read error", &recSource{err: errRead}, src(), "", errRead, "begin"},
		{"corrupt first group", src([]byte("short")), src(), "", nil, "begin"},
		{"corrupt group", src(reg(s1, x, "a"), []byte("short"), reg(s2, x, "b")), src(), "", nil, "at b"},
		{"corrupt flag", src(reg(s1, x, "a"), reg(s2, x, "b")), src(flg(s1, x, 0), []byte("short")), "", nil, "at b"},
		{"at fails", src(reg(s1, x, "a"), reg(s1, x, "b"), reg(s2, x, "c")), src(), "a", errVisit, "at b"},
		{"occupied fails", src(reg(s2, x, "c")), src(occ(s1, "o"), occ(s1, "p")), "o", errVisit, "occupied p"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{failAt: c.failAt}
			err := walkAll(t, r, c.groups, c.flags)
			if err == nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v (calls %q)", err, c.want, r.ev)
			}
			if c.notAfter != "" {
				for _, e := range r.ev {
					if strings.HasPrefix(e, c.notAfter) {
						t.Fatalf("%q after the error: calls %q", e, r.ev)
					}
				}
			}
		})
	}
}

// TestMerged: flags and the claims that lost, merged as the group walks
// read them: in byte order, every record once, each a copy.
func TestMerged(t *testing.T) {
	a := [][]byte{flg(s1, x, flagMeta), flg(s1, y, flagContent), occ(s2, "p")}
	b := [][]byte{flg(s1, x, flagJoined), flg(s1, y, flagContent), flg(s3, z, flagJoined)}
	m := &merged{a: src(a...), b: src(b...)}
	var got [][]byte
	for {
		r, err := m.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r) // kept: a copy, valid after the next call
	}
	want := slices.Concat(a, b)
	slices.SortStableFunc(want, bytes.Compare)
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d: %x, want %x", i, got[i], want[i])
		}
	}
	for _, c := range []struct{ a, b *recSource }{
		{&recSource{recs: a[:1], err: io.ErrUnexpectedEOF}, src(b...)},
		{src(a...), &recSource{err: io.ErrUnexpectedEOF}},
	} {
		m := &merged{a: c.a, b: c.b}
		var err error
		for n := 0; err == nil && n < 10; n++ {
			_, err = m.next()
		}
		if err != io.ErrUnexpectedEOF {
			t.Errorf("merge of a failing source: %v", err)
		}
	}
}

// ---- the decide pass's visitor ----

// inodeAt decodes the inode at the start of a kept or stale record.
func inodeAt(b []byte) inode {
	return inode{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}

type staleRec struct {
	n    inode
	path string
}

// decided is what a decider wrote.
type decided struct {
	decisions []decision
	kept      []inode
	stale     []staleRec
	st        Stats
}

// runDecider walks groups and flags with a decider writing to spools in a
// new directory, and reads back what it wrote.
func runDecider(t *testing.T, groups, flags [][]byte) decided {
	t.Helper()
	dir, err := fsx.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	m := &Mirror{}
	var sp [3]*spool
	for i, name := range []string{"decisions", "kept", "stale"} {
		if sp[i], err = newSpool(dir, name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sp[i].close)
	}
	v := &decider{m: m, out: sp[0], kept: sp[1], stale: sp[2]}
	if err := walkAll(t, v, src(groups...), src(flags...)); err != nil {
		t.Fatal(err)
	}
	var out decided
	out.st = m.st
	err = eachRecord(sp[0], func(b []byte) error {
		d, err := decodeDecision(slices.Clone(b))
		out.decisions = append(out.decisions, d)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = eachRecord(sp[1], func(b []byte) error {
		if len(b) != 16 {
			return fmt.Errorf("kept record of %d bytes", len(b))
		}
		out.kept = append(out.kept, inodeAt(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = eachRecord(sp[2], func(b []byte) error {
		if len(b) <= 16 {
			return fmt.Errorf("stale record of %d bytes", len(b))
		}
		out.stale = append(out.stale, staleRec{inodeAt(b), string(b[16:])})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDecider(t *testing.T) {
	R, L := uint8(fsx.TypeReg), uint8(fsx.TypeLnk)
	p := func(s string) []byte { return []byte(s) }
	cases := []struct {
		name          string
		groups, flags [][]byte
		decisions     []decision
		kept          []inode
		stale         []staleRec
		nKept         int64
	}{
		{name: "one inode all clean: nothing to do",
			groups: [][]byte{reg(s1, x, "a"), reg(s1, x, "b")},
			kept:   []inode{x}, nKept: 2},
		{name: "one inode, its metadata differs",
			groups:    [][]byte{reg(s1, x, "a"), reg(s1, x, "b")},
			flags:     [][]byte{flg(s1, x, flagMeta)},
			decisions: []decision{{src: s1, typ: R, keep: x, keepPath: p("a"), metaFix: true, first: p("a")}},
			kept:      []inode{x}, nKept: 2},
		{name: "a path absent in DST",
			groups:    [][]byte{reg(s1, x, "a"), reg(s1, absent, "b")},
			decisions: []decision{{src: s1, typ: R, keep: x, keepPath: p("a"), first: p("a")}},
			kept:      []inode{x}, nKept: 1},
		{name: "every path absent",
			groups:    [][]byte{reg(s1, absent, "a"), reg(s1, absent, "b")},
			decisions: []decision{{src: s1, typ: R, first: p("a")}}},
		{name: "content differs: nothing kept, the inode stale",
			groups:    [][]byte{reg(s1, x, "a"), reg(s1, x, "b")},
			flags:     [][]byte{flg(s1, x, flagContent|flagMeta)},
			decisions: []decision{{src: s1, typ: R, first: p("a")}},
			stale:     []staleRec{{x, "a"}}},
		{name: "symlink target differs: not stale (no data to reuse)",
			groups:    [][]byte{grp(L, s1, x, "l")},
			flags:     [][]byte{flg(s1, x, flagContent)},
			decisions: []decision{{src: s1, typ: L, first: p("l")}}},
		{name: "lost the DST inode to another source inode",
			groups:    [][]byte{reg(s1, x, "a")},
			flags:     [][]byte{flg(s1, x, flagJoined)},
			decisions: []decision{{src: s1, typ: R, first: p("a")}},
			stale:     []staleRec{{x, "a"}}},
		{name: "two clean DST inodes: the one with the most paths",
			groups:    [][]byte{reg(s1, x, "a"), reg(s1, y, "b"), reg(s1, y, "c")},
			decisions: []decision{{src: s1, typ: R, keep: y, keepPath: p("b"), first: p("a")}},
			kept:      []inode{x, y}, nKept: 2},
		{name: "two clean DST inodes, as many paths: the first",
			groups:    [][]byte{reg(s1, x, "b"), reg(s1, y, "a")},
			decisions: []decision{{src: s1, typ: R, keep: x, keepPath: p("b"), first: p("b")}},
			kept:      []inode{x, y}, nKept: 1},
		{name: "the bigger DST inode differs in content: the clean one",
			groups:    [][]byte{reg(s1, x, "a"), reg(s1, y, "b"), reg(s1, y, "c")},
			flags:     [][]byte{flg(s1, y, flagContent)},
			decisions: []decision{{src: s1, typ: R, keep: x, keepPath: p("a"), first: p("a")}},
			kept:      []inode{x}, stale: []staleRec{{y, "b"}}, nKept: 1},
		{name: "the kept inode's metadata decides metaFix",
			groups:    [][]byte{reg(s1, x, "a"), reg(s1, y, "b"), reg(s1, y, "c")},
			flags:     [][]byte{flg(s1, x, flagMeta)},
			decisions: []decision{{src: s1, typ: R, keep: y, keepPath: p("b"), first: p("a")}},
			kept:      []inode{x, y}, nKept: 2},
		{name: "the kept inode's metadata differs",
			groups:    [][]byte{reg(s1, x, "a"), reg(s1, y, "b"), reg(s1, y, "c")},
			flags:     [][]byte{flg(s1, y, flagMeta)},
			decisions: []decision{{src: s1, typ: R, keep: y, keepPath: p("b"), metaFix: true, first: p("a")}},
			kept:      []inode{x, y}, nKept: 2},
		{name: "an occupied path only",
			flags:     [][]byte{occ(s1, "o")},
			decisions: []decision{{src: s1, typ: 0, first: p("o")}}},
		{name: "an occupied path beside a clean inode",
			groups:    [][]byte{reg(s1, x, "a")},
			flags:     [][]byte{occ(s1, "b")},
			decisions: []decision{{src: s1, typ: R, keep: x, keepPath: p("a"), first: p("a")}},
			kept:      []inode{x}, nKept: 1},
		{name: "flags of pairs the groups no longer have",
			groups: [][]byte{reg(s1, y, "a")},
			flags:  [][]byte{flg(s1, x, flagContent), flg(s1, z, flagContent)},
			kept:   []inode{y}, nKept: 1},
		{name: "no metaFix inherited from the inode before (nothing kept)",
			groups: [][]byte{reg(s1, x, "a"), reg(s2, y, "b")},
			flags:  [][]byte{flg(s1, x, flagMeta), flg(s2, y, flagContent)},
			decisions: []decision{
				{src: s1, typ: R, keep: x, keepPath: p("a"), metaFix: true, first: p("a")},
				{src: s2, typ: R, first: p("b")},
			},
			kept: []inode{x}, stale: []staleRec{{y, "b"}}, nKept: 1},
		{name: "no metaFix inherited from the inode before (all absent)",
			groups: [][]byte{reg(s1, x, "a"), reg(s2, absent, "b")},
			flags:  [][]byte{flg(s1, x, flagMeta)},
			decisions: []decision{
				{src: s1, typ: R, keep: x, keepPath: p("a"), metaFix: true, first: p("a")},
				{src: s2, typ: R, first: p("b")},
			},
			kept: []inode{x}, nKept: 1},
		{name: "no metaFix inherited from the inode before (occupied only)",
			groups: [][]byte{reg(s1, x, "a")},
			flags:  [][]byte{flg(s1, x, flagMeta), occ(s2, "o")},
			decisions: []decision{
				{src: s1, typ: R, keep: x, keepPath: p("a"), metaFix: true, first: p("a")},
				{src: s2, first: p("o")},
			},
			kept: []inode{x}, nKept: 1},
		{name: "no keep inherited from the inode before",
			groups: [][]byte{reg(s1, x, "a"), reg(s1, absent, "a2"), reg(s2, y, "b")},
			flags:  [][]byte{flg(s2, y, flagContent)},
			decisions: []decision{
				{src: s1, typ: R, keep: x, keepPath: p("a"), first: p("a")},
				{src: s2, typ: R, first: p("b")},
			},
			kept: []inode{x}, stale: []staleRec{{y, "b"}}, nKept: 1},
		{name: "clean inodes between need no decision",
			groups: [][]byte{reg(s1, x, "a"), reg(s2, y, "b"), reg(s2, y, "c"), reg(s3, z, "d")},
			flags:  [][]byte{flg(s1, x, flagMeta), flg(s3, z, flagMeta)},
			decisions: []decision{
				{src: s1, typ: R, keep: x, keepPath: p("a"), metaFix: true, first: p("a")},
				{src: s3, typ: R, keep: z, keepPath: p("d"), metaFix: true, first: p("d")},
			},
			kept: []inode{x, y, z}, nKept: 4},
		{name: "long and odd paths carried",
			groups:    [][]byte{reg(s1, x, string(longPath)), reg(s1, absent, "new\nline\xff")},
			decisions: []decision{{src: s1, typ: R, keep: x, keepPath: longPath, first: longPath}},
			kept:      []inode{x}, nKept: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := runDecider(t, c.groups, c.flags)
			if len(got.decisions) != len(c.decisions) {
				t.Fatalf("decisions %+v, want %+v", got.decisions, c.decisions)
			}
			for i := range got.decisions {
				if !decisionEqual(got.decisions[i], c.decisions[i]) {
					t.Errorf("decision %d: %+v, want %+v", i, got.decisions[i], c.decisions[i])
				}
			}
			if !slices.Equal(got.kept, c.kept) {
				t.Errorf("kept %v, want %v", got.kept, c.kept)
			}
			if !slices.Equal(got.stale, c.stale) {
				t.Errorf("stale %v, want %v", got.stale, c.stale)
			}
			if got.st.Kept != c.nKept {
				t.Errorf("Stats.Kept %d, want %d", got.st.Kept, c.nKept)
			}
			if got.st.Changes() != 0 || got.st.MetaFixed != 0 {
				t.Errorf("the decide pass counted changes: %+v", got.st)
			}
		})
	}
}

// TestDeciderLosers: the decide pass reads the flags merged with the
// claims that lost: an inode another source inode won is not kept.
func TestDeciderLosers(t *testing.T) {
	dir, err := fsx.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	var sp [3]*spool
	for i, name := range []string{"d", "k", "s"} {
		if sp[i], err = newSpool(dir, name); err != nil {
			t.Fatal(err)
		}
		defer sp[i].close()
	}
	m := &Mirror{}
	v := &decider{m: m, out: sp[0], kept: sp[1], stale: sp[2]}
	flags := src(flg(s1, x, flagMeta), flg(s1, y, flagMeta))
	losers := src(appendFlag(nil, s1, y, flagJoined, nil))
	groups := src(reg(s1, x, "a"), reg(s1, y, "b"), reg(s1, y, "c"))
	if err := walkAll(t, v, groups, &merged{a: flags, b: losers}); err != nil {
		t.Fatal(err)
	}
	var ds []decision
	if err := eachRecord(sp[0], func(b []byte) error {
		d, err := decodeDecision(slices.Clone(b))
		ds = append(ds, d)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := decision{src: s1, typ: fsx.TypeReg, keep: x, keepPath: []byte("a"), metaFix: true, first: []byte("a")}
	if len(ds) != 1 || !decisionEqual(ds[0], want) {
		t.Fatalf("decisions %+v, want %+v", ds, want)
	}
	if m.st.Kept != 1 {
		t.Errorf("Stats.Kept %d, want 1", m.st.Kept)
	}
}
