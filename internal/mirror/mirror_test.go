package mirror

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"hlcp/internal/differ"
)

// ---- the touched sort: deepest first ----

// isBelow tells whether path q is below directory p (everything is below
// the root, "").
func isBelow(q, p []byte) bool {
	if len(p) == 0 {
		return len(q) > 0
	}
	return len(q) > len(p) && bytes.HasPrefix(q, p) && q[len(p)] == '/'
}

func TestInvertOrder(t *testing.T) {
	cases := []struct {
		first, then string // first's record sorts before then's (both marks)
	}{
		{"a/b", "a"},
		{"a/b/c", "a/b"},
		{"a/b/c", "a"},
		{"a", ""},
		{"a/b/c", ""},
		{"ab/c", "ab"},
		{"a b/c", "a b"},
		{"a-b/c", "a-b"},
		{"a\xff/x", "a\xff"},
		{"\xff/\x01", "\xff"},
		{"caf\xe9/new\nline", "caf\xe9"},
		{string(longPath), string(longPath[:strings.LastIndexByte(string(longPath), '/')])},
	}
	for _, c := range cases {
		for _, m1 := range []byte{markDiffers, markTouched} {
			for _, m2 := range []byte{markDiffers, markTouched} {
				a, b := invert([]byte(c.first), m1), invert([]byte(c.then), m2)
				if bytes.Compare(a, b) >= 0 {
					t.Errorf("%q (mark %d) does not sort before the directory %q above it (mark %d)", c.first, m1, c.then, m2)
				}
			}
		}
	}
	// The same path: differs before touched, so that the first record of
	// a path says which it is.
	for _, p := range append([][]byte{nil}, testPaths...) {
		if bytes.Compare(invert(p, markDiffers), invert(p, markTouched)) >= 0 {
			t.Errorf("%q: markDiffers does not sort before markTouched", p)
		}
	}
	// Layout: the bytes complemented, 0xff, the mark.
	if got := invert([]byte("a/"), markTouched); !bytes.Equal(got, []byte{^byte('a'), ^byte('/'), 0xff, markTouched}) {
		t.Errorf("invert(a/) = %x", got)
	}
	if got := invert(nil, markDiffers); !bytes.Equal(got, []byte{0xff, markDiffers}) {
		t.Errorf("invert of the root = %x", got)
	}
}

func TestInvertRoundTrip(t *testing.T) {
	for _, p := range append([][]byte{nil, {}, []byte("\x01"), []byte("\xfe\xff")}, testPaths...) {
		for _, m := range []byte{markDiffers, markTouched} {
			rec := invert(p, m)
			if len(rec) != len(p)+2 || rec[len(rec)-1] != m || rec[len(rec)-2] != 0xff {
				t.Fatalf("invert(%q, %d) = %x", p, m, rec)
			}
			if got := inverted(rec); !bytes.Equal(got, p) {
				t.Fatalf("inverted(invert(%q)) = %q", p, got)
			}
		}
	}
}

// TestInvertProperty: random directories made of components, each with
// all its ancestors, sorted as the touched sort sorts them: every
// directory comes after everything below it, the records of one path are
// together with markDiffers first, and each decodes to its path.
func TestInvertProperty(t *testing.T) {
	comps := []string{"a", "b", "ab", "a-b", "a b", "a.b", "a\xff", "\xff", "\x01", "\n", "caf\xe9", "z", ".hidden", "a0", "a~"}
	r := newRand(7)
	for round := range 50 {
		set := map[string]bool{"": true}
		for range 40 {
			depth := 1 + r.IntN(5)
			var parts []string
			for range depth {
				parts = append(parts, comps[r.IntN(len(comps))])
				set[strings.Join(parts, "/")] = true // and every ancestor
			}
		}
		type rec struct {
			b    []byte
			path string
			mark byte
		}
		var recs []rec
		for p := range set {
			for _, m := range []byte{markDiffers, markTouched} {
				if r.IntN(3) > 0 || m == markTouched {
					recs = append(recs, rec{invert([]byte(p), m), p, m})
				}
			}
		}
		slices.SortFunc(recs, func(a, b rec) int { return bytes.Compare(a.b, b.b) })
		last := map[string]int{} // the last index of each path
		for i, x := range recs {
			if got := string(inverted(x.b)); got != x.path {
				t.Fatalf("round %d: %x decodes to %q, want %q", round, x.b, got, x.path)
			}
			if j, ok := last[x.path]; ok && j != i-1 {
				t.Fatalf("round %d: records of %q at %d and %d, apart", round, x.path, j, i)
			}
			if i > 0 && recs[i-1].path == x.path && recs[i-1].mark != markDiffers {
				t.Fatalf("round %d: %q: mark %d before mark %d", round, x.path, recs[i-1].mark, x.mark)
			}
			last[x.path] = i
		}
		for i, a := range recs {
			for _, b := range recs[:i] {
				if isBelow([]byte(a.path), []byte(b.path)) {
					t.Fatalf("round %d: %q sorts after the directory %q above it", round, a.path, b.path)
				}
			}
		}
	}
}

// ---- names ----

func TestDirName(t *testing.T) {
	cases := []struct{ path, want string }{
		{"", "./"},
		{"a", "a/"},
		{"a/b", "a/b/"},
		{"new\nline", "new\nline/"},
		{"caf\xe9", "caf\xe9/"},
		{string(longPath), string(longPath) + "/"},
	}
	for _, c := range cases {
		if got := dirName([]byte(c.path)); got != c.want {
			t.Errorf("dirName(%q) = %q, want %q", c.path, got, c.want)
		}
	}
	if got := dirName(nil); got != "./" {
		t.Errorf("dirName(nil) = %q", got)
	}
}

func TestSplit(t *testing.T) {
	cases := []struct{ path, dir, name string }{
		{"", "", ""},
		{"a", "", "a"},
		{"a/b", "a", "b"},
		{"a/b/c", "a/b", "c"},
		{"a/", "a", ""},
		{"/a", "", "a"},
		{"a//b", "a/", "b"},
		{"new\nline/caf\xe9", "new\nline", "caf\xe9"},
		{"\xff/\xfe", "\xff", "\xfe"},
		{string(longPath), string(longPath[:len(longPath)-len("/leaf")]), "leaf"},
	}
	for _, c := range cases {
		dir, name := split([]byte(c.path))
		if dir != c.dir || name != c.name {
			t.Errorf("split(%q) = %q, %q; want %q, %q", c.path, dir, name, c.dir, c.name)
		}
		if got := dirOf([]byte(c.path)); got != c.dir {
			t.Errorf("dirOf(%q) = %q, want %q", c.path, got, c.dir)
		}
		// The directory and the name make the path again (but for the
		// root's own entries, which have no slash).
		if c.dir != "" || strings.HasPrefix(c.path, "/") {
			if c.dir+"/"+c.name != c.path {
				t.Errorf("split(%q) does not join back", c.path)
			}
		} else if c.name != c.path {
			t.Errorf("split(%q): name %q", c.path, c.name)
		}
	}
}

// ---- the deletion limit ----

func TestCheckDeletes(t *testing.T) {
	cases := []struct {
		name      string
		dstPaths  int64
		maxDelete int64
		pct       float64
		extras    int64
		refused   bool
		limit     string // in the message, when refused
	}{
		{name: "default: half", dstPaths: 10, maxDelete: -1, extras: 5},
		{name: "default: half and one", dstPaths: 10, maxDelete: -1, extras: 6, refused: true, limit: "the 5 allowed"},
		{name: "default: half rounds down", dstPaths: 11, maxDelete: -1, extras: 6, refused: true, limit: "the 5 allowed"},
		{name: "default: odd count, at the limit", dstPaths: 11, maxDelete: -1, extras: 5},
		{name: "default: nothing to delete", dstPaths: 0, maxDelete: -1, extras: 0},
		{name: "default: a DST of one path", dstPaths: 1, maxDelete: -1, extras: 1, refused: true, limit: "the 0 allowed"},
		{name: "default: a large DST", dstPaths: 2_000_000, maxDelete: -1, extras: 1_000_001, refused: true, limit: "the 1,000,000 allowed"},
		{name: "N: at the limit", dstPaths: 100, maxDelete: 3, extras: 3},
		{name: "N: one more", dstPaths: 100, maxDelete: 3, extras: 4, refused: true, limit: "the 3 allowed"},
		{name: "N above half", dstPaths: 100, maxDelete: 90, extras: 90},
		{name: "N above DST's paths", dstPaths: 10, maxDelete: 1000, extras: 10},
		{name: "0: none", dstPaths: 100, maxDelete: 0, extras: 0},
		{name: "0: one is too many", dstPaths: 100, maxDelete: 0, extras: 1, refused: true, limit: "the 0 allowed"},
		{name: "P%: at the limit", dstPaths: 100, pct: 10, extras: 10},
		{name: "P%: one more", dstPaths: 100, pct: 10, extras: 11, refused: true, limit: "the 10 allowed"},
		{name: "P% rounds down", dstPaths: 11, pct: 50, extras: 6, refused: true, limit: "the 5 allowed"},
		{name: "P% rounds down, at the limit", dstPaths: 11, pct: 50, extras: 5},
		{name: "100%", dstPaths: 100, pct: 100, extras: 100},
		{name: "P% wins over N", dstPaths: 100, maxDelete: 1000, pct: 10, extras: 11, refused: true, limit: "the 10 allowed"},
		{name: "fractional P%", dstPaths: 1000, pct: 0.5, extras: 5},
		{name: "fractional P%, one more", dstPaths: 1000, pct: 0.5, extras: 6, refused: true, limit: "the 5 allowed"},
		{name: "29% of 100: at the limit", dstPaths: 100, pct: 29, extras: 29},
		{name: "57% of 100: at the limit", dstPaths: 100, pct: 57, extras: 57},
		{name: "29% of 100: one more", dstPaths: 100, pct: 29, extras: 30, refused: true, limit: "allowed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := &Mirror{o: Options{MaxDelete: c.maxDelete, MaxDeletePct: c.pct}}
			m.st.Compared = differ.Result{DstPaths: c.dstPaths}
			err := m.checkDeletes(&collector{nExtras: c.extras})
			if !c.refused {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrTooManyDeletes) {
				t.Fatalf("err %v, want ErrTooManyDeletes", err)
			}
			if !strings.Contains(err.Error(), c.limit) {
				t.Errorf("message %q does not say %q", err, c.limit)
			}
		})
	}
}

// ---- what a difference means for a pair ----

func TestFlagOf(t *testing.T) {
	cases := []struct {
		code     string
		checksum bool
		want     uint8
	}{
		{differ.CodeMode, false, flagMeta},
		{differ.CodeOwner, false, flagMeta},
		{differ.CodeXattr, false, flagMeta},
		{differ.CodeACL, false, flagMeta},
		{differ.CodeAtime, false, flagMeta},
		{differ.CodeMtime, false, flagContent},
		{differ.CodeMtime, true, flagMeta}, // the content was compared
		{differ.CodeSize, false, flagContent},
		{differ.CodeSize, true, flagContent},
		{differ.CodeContent, true, flagContent},
		{differ.CodeType, false, flagContent},
		{differ.CodeTarget, false, flagContent},
		{differ.CodeRdev, false, flagContent},
	}
	for _, c := range cases {
		m := &Mirror{o: Options{Checksum: c.checksum}}
		if got := m.flagOf(c.code); got != c.want {
			t.Errorf("flagOf(%s), checksum %v = %d, want %d", c.code, c.checksum, got, c.want)
		}
	}
}
