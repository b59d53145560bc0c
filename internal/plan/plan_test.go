package plan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// testDir opens the directory at path as an fsx.Dir closed at the end of
// the test.
func testDir(t testing.TB, path string) *fsx.Dir {
	t.Helper()
	d, err := fsx.OpenDir(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// tempDir is testDir of a new t.TempDir().
func tempDir(t testing.TB) *fsx.Dir {
	t.Helper()
	return testDir(t, t.TempDir())
}

func TestEntryRoundTrip(t *testing.T) {
	cases := []struct {
		dev, ino uint64
		dir      uint32
		typ      uint8
		name     string
	}{
		{1, 2, 3, 8, "a"},
		{^uint64(0), ^uint64(0), ^uint32(0), 10, "caf\xe9\nwith newline"},
		{0, 0, 0, 1, string(bytes.Repeat([]byte("x"), 255))},
	}
	for _, c := range cases {
		rec := AppendEntry(nil, c.dev, c.ino, c.dir, c.typ, []byte(c.name))
		e, err := DecodeEntry(rec)
		if err != nil {
			t.Fatal(err)
		}
		if e.Dev != c.dev || e.Ino != c.ino || e.Dir != c.dir || e.Type != c.typ || string(e.Name) != c.name {
			t.Errorf("round trip of %+v gave %+v", c, e)
		}
	}
	if _, err := DecodeEntry(make([]byte, EntryHeader)); err == nil {
		t.Error("an entry without a name must not decode")
	}
}

// The encoding must sort by (dev, ino) first: that is what makes groups.
func TestEntryOrder(t *testing.T) {
	a := AppendEntry(nil, 1, 300, 9, 8, []byte("zzz"))
	b := AppendEntry(nil, 1, 301, 0, 8, []byte("a"))
	c := AppendEntry(nil, 2, 1, 0, 8, []byte("a"))
	if !(bytes.Compare(a, b) < 0 && bytes.Compare(b, c) < 0) {
		t.Error("entries do not sort by (dev, ino)")
	}
	if !SameInode(a, AppendEntry(nil, 1, 300, 0, 10, []byte("q"))) || SameInode(a, b) {
		t.Error("SameInode wrong")
	}
}

func TestDirRoundTrip(t *testing.T) {
	d := Dir{ID: 7, Parent: 3, Dev: 11, Ino: 12, Mode: unix.S_IFDIR | 0o1777, Uid: 1234, Gid: 5678,
		Atime: unix.Timespec{Sec: -5, Nsec: 999999999}, Mtime: unix.Timespec{Sec: 1600000000, Nsec: 123}, Flags: DirUnreadable, Name: []byte("n\xff")}
	var got Dir
	if err := DecodeDir(AppendDir(nil, &d), &got); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(d) {
		t.Errorf("got %+v want %+v", got, d)
	}
}

// TestDirTable builds a table from shuffled records across several runs and
// reads it by id, forwards and backwards, and as paths.
func TestDirTable(t *testing.T) {
	dir := tempDir(t)
	const n = 20000
	s := extsort.New(dir, 1<<20, false)
	rng := rand.New(rand.NewSource(1))
	for _, i := range rng.Perm(n) {
		d := Dir{ID: uint32(i), Parent: uint32(i / 2), Mode: uint32(i), Name: []byte(fmt.Sprintf("d%d", i))}
		if i == 0 {
			d.Name = nil
		}
		if err := s.Add(AppendDir(nil, &d)); err != nil {
			t.Fatal(err)
		}
	}
	runs, _, _, err := s.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) < 2 {
		t.Fatalf("want several runs, got %d", len(runs))
	}
	tab, files, err := BuildDirTable(runs, dir, dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	if files[DirsFile].Records != n || files[DirsIdxFile].Records != n+1 {
		t.Errorf("files %+v", files)
	}
	if tab.Len() != n {
		t.Fatalf("Len %d", tab.Len())
	}
	var d Dir
	for _, id := range []uint32{0, 1, 2, 999, n - 1} {
		if err := tab.Get(id, &d); err != nil || d.ID != id || d.Mode != id {
			t.Errorf("Get(%d) = %+v, %v", id, d, err)
		}
	}
	if err := tab.Get(n, &d); err == nil {
		t.Error("Get past the end must fail")
	}
	if p := tab.Path(6); p != "d1/d3/d6" {
		t.Errorf("Path(6) = %q", p)
	}
	next := uint32(5)
	if err := tab.Scan(5, func(d *Dir) error {
		if d.ID != next {
			return fmt.Errorf("scan: id %d want %d", d.ID, next)
		}
		next++
		return nil
	}); err != nil || next != n {
		t.Errorf("Scan: %v (ended at %d)", err, next)
	}
	// Resolve answers the same from disk, from RAM, and after a budget
	// too small to load the names.
	for _, tc := range []struct {
		name   string
		budget int64
		loaded bool
	}{{"disk", -1, false}, {"too-small", 100 << 10, false}, {"ram", 1 << 20, true}} {
		if tc.budget >= 0 {
			if ok, err := tab.LoadNames(tc.budget); err != nil || ok != tc.loaded {
				t.Fatalf("%s: LoadNames(%d) = %v, %v; want %v", tc.name, tc.budget, ok, err, tc.loaded)
			}
		}
		if got := tab.nameOffs != nil; got != tc.loaded {
			t.Fatalf("%s: names in RAM %v, want %v", tc.name, got, tc.loaded)
		}
		for _, id := range []uint32{0, 1, 2, 6, 999, n - 1} {
			parent, name, err := tab.Resolve(id)
			wantName := fmt.Sprintf("d%d", id)
			if id == 0 {
				wantName = ""
			}
			if err != nil || parent != id/2 || name != wantName {
				t.Errorf("%s: Resolve(%d) = %d, %q, %v", tc.name, id, parent, name, err)
			}
		}
		if _, _, err := tab.Resolve(n); err == nil {
			t.Errorf("%s: Resolve past the end must fail", tc.name)
		}
		if p := tab.Path(6); p != "d1/d3/d6" {
			t.Errorf("%s: Path(6) = %q", tc.name, p)
		}
	}
	want := uint32(n - 1)
	seen := 0
	if err := tab.ScanReverse(n, func(d *Dir) error {
		if d.ID != want {
			return fmt.Errorf("reverse: id %d want %d", d.ID, want)
		}
		want--
		seen++
		return nil
	}); err != nil || seen != n {
		t.Errorf("ScanReverse: %v (%d seen)", err, seen)
	}
}

// TestDirTableGap: a missing id is an error, not a silent shift.
func TestDirTableGap(t *testing.T) {
	dir := tempDir(t)
	s := extsort.New(dir, 1<<20, false)
	for _, id := range []uint32{0, 1, 3} {
		s.Add(AppendDir(nil, &Dir{ID: id}))
	}
	runs, _, _, _ := s.Finish()
	if _, _, err := BuildDirTable(runs, dir, dir, 1<<20); err == nil {
		t.Fatal("a table with a gap in its ids must be refused")
	}
	// Nothing is left under either name, nor a temporary.
	names, err := dir.Names()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if name == DirsFile || name == DirsIdxFile || name == DirsFile+".tmp" || name == DirsIdxFile+".tmp" {
			t.Errorf("%s left behind by a refused table", name)
		}
	}
}

// TestBuildPlan checks group statistics and that the reader resumes at an
// offset.
func TestBuildPlan(t *testing.T) {
	dir := tempDir(t)
	s := extsort.New(dir, 1<<20, false)
	// inode i has (i % 5) + 1 paths; 1000 inodes.
	paths := 0
	for i := 0; i < 1000; i++ {
		for k := 0; k <= i%5; k++ {
			s.Add(AppendEntry(nil, 1, uint64(1000-i), uint32(k), 8, []byte(fmt.Sprintf("f%d-%d", i, k))))
			paths++
		}
	}
	runs, _, _, _ := s.Finish()
	st, files, err := Build(context.Background(), runs, dir, dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if files[PlanFile].Records != int64(paths) || files[LinksFile].Records != st.Links {
		t.Errorf("files %+v for %d paths, %d links", files, paths, st.Links)
	}
	if st.Paths != int64(paths) || st.Groups != 1000 || st.LinkGroups != 800 || st.MaxLinks != 5 || st.ByType[8] != 1000 || st.Links != int64(paths-1000) {
		t.Errorf("stats %+v", st)
	}
	r, err := OpenReader(dir, PlanFile, files[PlanFile], 0)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	var recs [][]byte
	for {
		off := r.Offset()
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
		recs = append(recs, append([]byte(nil), rec...))
	}
	r.Close()
	for i := 1; i < len(recs); i++ {
		if bytes.Compare(recs[i-1], recs[i]) > 0 {
			t.Fatalf("plan not sorted at %d", i)
		}
	}
	mid := len(recs) / 2
	r2, err := OpenReader(dir, PlanFile, files[PlanFile], offs[mid])
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	rec, err := r2.Next()
	if err != nil || !bytes.Equal(rec, recs[mid]) || r2.Offset() != offs[mid+1] {
		t.Errorf("resume at offset: %v", err)
	}
	for _, name := range []string{PlanFile + ".tmp", LinksFile + ".tmp", linkRunsDir} {
		if _, err := dir.Lstat(name); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", name, err)
		}
	}
}

// TestBuildLinks: the link file has one record per path after the first of
// its group, linked to that first path, sorted by destination directory;
// names of every length survive the encoding.
func TestBuildLinks(t *testing.T) {
	dir := tempDir(t)
	s := extsort.New(dir, 1<<20, false)
	type key struct {
		dir  uint32
		name string
	}
	first := map[uint64]key{}
	want := map[key]key{}
	for i := 0; i < 3000; i++ {
		ino := uint64(7919*i%3001 + 1)
		n := i%7 + 1
		for k := 0; k < n; k++ {
			name := fmt.Sprintf("f%d-%d-%s", i, k, bytes.Repeat([]byte{'x'}, (i*31+k)%300))
			d := uint32((i*13 + k*101) % 97)
			s.Add(AppendEntry(nil, 3, ino, d, 8, []byte(name)))
			// The sort order within a group is (dir, type, name).
			kk := key{d, name}
			if f, ok := first[ino]; !ok || f.dir > d || f.dir == d && f.name > name {
				first[ino] = kk
			}
			want[kk] = key{}
		}
	}
	runs, _, _, _ := s.Finish()
	var inos []uint64
	for ino := range first {
		inos = append(inos, ino)
	}
	slices.Sort(inos)
	st, files, err := Build(context.Background(), runs, dir, dir, 64<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenReader(dir, LinksFile, files[LinksFile], 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var l Link
	var prev []byte
	n := int64(0)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if prev != nil && bytes.Compare(prev, rec) > 0 {
			t.Fatalf("link file not sorted at record %d", n)
		}
		prev = append(prev[:0], rec...)
		if err := DecodeLink(rec, &l); err != nil {
			t.Fatal(err)
		}
		if ch, d := LinkKey(rec); d != l.Dir || ch != l.Chunk {
			t.Fatalf("LinkKey %d, %d != %d, %d", ch, d, l.Chunk, l.Dir)
		}
		k := key{l.Dir, string(l.Name)}
		if _, ok := want[k]; !ok {
			t.Fatalf("link to unknown path %v", k)
		}
		if f := first[l.Ino]; f != (key{l.TDir, string(l.TName)}) || l.Dev != 3 || l.Type != 8 {
			t.Fatalf("link %v targets %d/%q (ino %d), want first path %v", k, l.TDir, l.TName, l.Ino, f)
		}
		if want := uint32(slices.Index(inos, l.Ino) / ChunkGroups); l.Chunk != want {
			t.Fatalf("link of inode %d in chunk %d, want %d", l.Ino, l.Chunk, want)
		}
		if k == first[l.Ino] {
			t.Fatalf("first path %v has a link record", k)
		}
		n++
	}
	if n != st.Links || n != int64(len(want)-len(first)) {
		t.Errorf("%d link records, stats %d, want %d", n, st.Links, len(want)-len(first))
	}
}

func FuzzDecodeLink(f *testing.F) {
	f.Add(AppendLink(nil, &Link{Chunk: 5, Dir: 1, Name: []byte("a"), TDir: 2, TName: []byte("b"), Dev: 3, Ino: 4, Type: 8}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, rec []byte) {
		var l Link
		if DecodeLink(rec, &l) != nil {
			return
		}
		if len(l.TName) == 0 || len(l.Name) == 0 {
			t.Fatalf("decoded an empty name from %x", rec)
		}
		var l2 Link
		if err := DecodeLink(AppendLink(nil, &l), &l2); err != nil || l2.Chunk != l.Chunk || l2.Dir != l.Dir || l2.TDir != l.TDir || l2.Dev != l.Dev || l2.Ino != l.Ino ||
			l2.Type != l.Type || !bytes.Equal(l2.Name, l.Name) || !bytes.Equal(l2.TName, l.TName) {
			t.Fatalf("round trip of %x: %v, %+v != %+v", rec, err, l2, l)
		}
	})
}

// TestDirFlags: the directory flags are distinct bits, each survives the
// encoding, alone and together.
func TestDirFlags(t *testing.T) {
	flags := []uint8{DirMountSkipped, DirUnreadable, DirGone, DirMountPoint}
	var all uint8
	for _, f := range flags {
		if f == 0 || f&(f-1) != 0 || all&f != 0 {
			t.Fatalf("flag %#x is not a bit of its own (others %#x)", f, all)
		}
		all |= f
	}
	for _, f := range append(flags, all, 0) {
		d := Dir{ID: 1, Flags: f, Name: []byte("x")}
		var got Dir
		if err := DecodeDir(AppendDir(nil, &d), &got); err != nil || got.Flags != f {
			t.Errorf("flags %#x decoded as %#x, %v", f, got.Flags, err)
		}
	}
}
