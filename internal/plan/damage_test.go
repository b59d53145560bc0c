package plan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	"hlcp/internal/blockfile"
	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// stateFiles are the files Build and BuildDirTable write.
var stateFiles = []string{PlanFile, LinksFile, DirsFile, DirsIdxFile}

// state is a plan and a directory table as written, kept as bytes so that
// each case damages its own copy.
type state struct {
	files map[string]blockfile.Info
	data  map[string][]byte   // each file's bytes on disk
	recs  map[string][][]byte // the records of the plan and the link file
	dirs  []Dir               // the directory records, by id
}

// subDir makes the directory name in d, closed at the end of the test.
func subDir(t testing.TB, d *fsx.Dir, name string) *fsx.Dir {
	t.Helper()
	s, err := d.Mkdir(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testDirRecord is directory id of the table buildState writes.
func testDirRecord(id uint32) Dir {
	d := Dir{ID: id, Parent: id / 2, Dev: 5, Ino: uint64(id) + 100, Mode: 0o40000 | id%0o1000, Uid: id, Gid: id + 1, Flags: uint8(id % 16),
		Name: fmt.Appendf(nil, "dir-%d", id)}
	d.Atime.Sec, d.Atime.Nsec = int64(id), 999999999
	d.Mtime.Sec, d.Mtime.Nsec = -int64(id), int64(id)
	if id == 0 {
		d.Name = nil
	}
	return d
}

// writeState builds a plan, its link file and a directory table of
// several blocks each into out, and returns what was written.
func writeState(t testing.TB, tmp, out *fsx.Dir) (Stats, map[string]blockfile.Info) {
	t.Helper()
	es := extsort.New(subDir(t, tmp, "entries"), 1<<20, false)
	for i := 0; i < 2000; i++ {
		for k := 0; k <= i%4; k++ {
			if err := es.Add(AppendEntry(nil, 1, uint64(i+1), uint32(k*7), 8, fmt.Appendf(nil, "file-%d-%d", i, k))); err != nil {
				t.Fatal(err)
			}
		}
	}
	eruns, _, _, err := es.Finish()
	if err != nil {
		t.Fatal(err)
	}
	ds := extsort.New(subDir(t, tmp, "dirs"), 1<<20, false)
	for id := uint32(0); id < 3000; id++ {
		d := testDirRecord(id)
		if err := ds.Add(AppendDir(nil, &d)); err != nil {
			t.Fatal(err)
		}
	}
	druns, _, _, err := ds.Finish()
	if err != nil {
		t.Fatal(err)
	}
	st, files, err := Build(context.Background(), eruns, tmp, out, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	tab, dfiles, err := BuildDirTable(druns, tmp, out, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	tab.Close()
	for k, v := range dfiles {
		files[k] = v
	}
	return st, files
}

func buildState(t testing.TB) *state {
	t.Helper()
	out := tempDir(t)
	_, files := writeState(t, tempDir(t), out)
	s := &state{files: files, data: map[string][]byte{}, recs: map[string][][]byte{}}
	for _, name := range stateFiles {
		b, err := out.ReadFile(name, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != files[name].Size {
			t.Fatalf("%s: %d bytes, info %+v", name, len(b), files[name])
		}
		if len(b) <= 3*blockfile.Block {
			t.Fatalf("%s: only %d bytes: the cases need a few blocks", name, len(b))
		}
		s.data[name] = b
	}
	for _, name := range []string{PlanFile, LinksFile} {
		recs, err := readFile(out, name, files[name])
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(recs)) != files[name].Records {
			t.Fatalf("%s: %d records, info %+v", name, len(recs), files[name])
		}
		s.recs[name] = recs
	}
	for id := uint32(0); id < 3000; id++ {
		s.dirs = append(s.dirs, testDirRecord(id))
	}
	return s
}

// place writes the state's files into a new directory, through damage for
// the file named victim.
func (s *state) place(t testing.TB, victim string, damage func([]byte) []byte) *fsx.Dir {
	t.Helper()
	d := tempDir(t)
	for _, name := range stateFiles {
		b := s.data[name]
		if name == victim {
			b = damage(bytes.Clone(b))
		}
		if err := os.WriteFile(d.Join(name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// readFile reads a plan or link file from the start to its end.
func readFile(dir *fsx.Dir, name string, info blockfile.Info) ([][]byte, error) {
	r, err := OpenReader(dir, name, info, 0)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var recs [][]byte
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		recs = append(recs, bytes.Clone(rec))
	}
}

// sameDir reports whether d is want (names compared by content).
func sameDir(d, want *Dir) bool {
	return d.ID == want.ID && d.Parent == want.Parent && d.Dev == want.Dev && d.Ino == want.Ino && d.Mode == want.Mode &&
		d.Uid == want.Uid && d.Gid == want.Gid && d.Atime == want.Atime && d.Mtime == want.Mtime && d.Flags == want.Flags &&
		bytes.Equal(d.Name, want.Name)
}

// dirTableOps opens the table in dir and runs every read on it: Get of
// each id, Scan, ScanReverse and LoadNames (then Resolve of each id). Each
// read either fails or returns exactly the records written: a wrong record
// is a test failure here. It returns each read's error (open: the
// OpenDirTable's; nil when it succeeded).
func dirTableOps(t *testing.T, dir *fsx.Dir, files map[string]blockfile.Info, want []Dir) map[string]error {
	t.Helper()
	errs := map[string]error{}
	tab, err := OpenDirTable(dir, files)
	errs["open"] = err
	if err != nil {
		return errs
	}
	defer tab.Close()
	if tab.Len() != uint32(len(want)) {
		t.Fatalf("table of %d directories, %d written", tab.Len(), len(want))
	}
	var d Dir
	for id := range want {
		if err := tab.Get(uint32(id), &d); err != nil {
			if errs["get"] == nil {
				errs["get"] = err
			}
			continue
		}
		if !sameDir(&d, &want[id]) {
			t.Fatalf("Get(%d) = %+v without an error, want %+v", id, d, want[id])
		}
	}
	next := 0
	errs["scan"] = tab.Scan(0, func(d *Dir) error {
		if next >= len(want) || !sameDir(d, &want[next]) {
			t.Fatalf("Scan: record %d is %+v", next, *d)
		}
		next++
		return nil
	})
	if errs["scan"] == nil && next != len(want) {
		t.Fatalf("Scan saw %d directories of %d without an error", next, len(want))
	}
	next = len(want) - 1
	errs["reverse"] = tab.ScanReverse(uint32(len(want)), func(d *Dir) error {
		if next < 0 || !sameDir(d, &want[next]) {
			t.Fatalf("ScanReverse: record %d is %+v", next, *d)
		}
		next--
		return nil
	})
	if errs["reverse"] == nil && next != -1 {
		t.Fatalf("ScanReverse stopped above id %d without an error", next)
	}
	ok, err := tab.LoadNames(1 << 30)
	errs["names"] = err
	if err == nil && !ok {
		t.Fatal("LoadNames did not load the names within 1 GiB")
	}
	if err != nil && (ok || tab.nameOffs != nil) {
		t.Fatalf("LoadNames failed (%v) but loaded names", err)
	}
	for id := range want {
		parent, name, err := tab.Resolve(uint32(id))
		if err != nil {
			if errs["resolve"] == nil {
				errs["resolve"] = err
			}
			continue
		}
		if parent != want[id].Parent || name != string(want[id].Name) {
			t.Fatalf("Resolve(%d) = %d, %q without an error", id, parent, name)
		}
	}
	return errs
}

// lastBoundary is the last block boundary before the end of b.
func lastBoundary(b []byte) int { return (len(b) - 1) / blockfile.Block * blockfile.Block }

func flipAt(pos func(b []byte) int) func([]byte) []byte {
	return func(b []byte) []byte {
		b[pos(b)] ^= 0x20
		return b
	}
}

// damages are the ways a state file is damaged; each leaves the recorded
// Info as it was.
var damages = []struct {
	name string
	fn   func([]byte) []byte
	cut  bool // the size changed
}{
	{"truncate to 0", func(b []byte) []byte { return b[:0] }, true},
	{"cut at the first block boundary", func(b []byte) []byte { return b[:blockfile.Block] }, true},
	{"cut at the last block boundary", func(b []byte) []byte { return b[:lastBoundary(b)] }, true},
	{"cut mid-block", func(b []byte) []byte { return b[:lastBoundary(b)-blockfile.Block/2] }, true},
	{"cut in the CRC of the last block", func(b []byte) []byte { return b[:len(b)-2] }, true},
	{"cut the last byte", func(b []byte) []byte { return b[:len(b)-1] }, true},
	{"flip the first byte", flipAt(func(b []byte) int { return 0 }), false},
	{"flip a byte mid-file", flipAt(func(b []byte) int { return len(b) / 2 }), false},
	{"flip a byte of a full block's CRC", flipAt(func(b []byte) int { return blockfile.Block - 1 }), false},
	{"flip a byte of the last block", flipAt(func(b []byte) int { return lastBoundary(b) + 1 }), false},
	{"flip the last byte", flipAt(func(b []byte) int { return len(b) - 1 }), false},
	{"zero a block", func(b []byte) []byte {
		clear(b[blockfile.Block : 2*blockfile.Block])
		return b
	}, false},
	{"append a byte", func(b []byte) []byte { return append(b, 0) }, true},
	{"append a block", func(b []byte) []byte { return append(b, make([]byte, blockfile.Block)...) }, true},
}

// TestStateDamage: a state file cut, bit-flipped, zeroed or grown is
// reported as damaged (an error wrapping blockfile.ErrDamaged) by whatever
// reads it, never read as fewer or other records.
func TestStateDamage(t *testing.T) {
	s := buildState(t)
	// The intact state reads back whole.
	intact := s.place(t, "", nil)
	for _, name := range []string{PlanFile, LinksFile} {
		recs, err := readFile(intact, name, s.files[name])
		if err != nil || len(recs) != len(s.recs[name]) {
			t.Fatalf("intact %s: %d records, %v", name, len(recs), err)
		}
	}
	for op, err := range dirTableOps(t, intact, s.files, s.dirs) {
		if err != nil {
			t.Fatalf("intact directory table: %s: %v", op, err)
		}
	}

	for _, victim := range stateFiles {
		for _, dmg := range damages {
			t.Run(victim+"/"+dmg.name, func(t *testing.T) {
				dir := s.place(t, victim, dmg.fn)
				switch victim {
				case PlanFile, LinksFile:
					recs, err := readFile(dir, victim, s.files[victim])
					if !errors.Is(err, blockfile.ErrDamaged) {
						t.Fatalf("read %d records of %d, error %v; want one wrapping ErrDamaged", len(recs), len(s.recs[victim]), err)
					}
					for i, rec := range recs {
						if !bytes.Equal(rec, s.recs[victim][i]) {
							t.Fatalf("record %d read as %x, written %x", i, rec, s.recs[victim][i])
						}
					}
					if dmg.cut {
						if _, err := OpenReader(dir, victim, s.files[victim], 0); !errors.Is(err, blockfile.ErrDamaged) {
							t.Fatalf("OpenReader of a file of another size: %v", err)
						}
					}
				default:
					errs := dirTableOps(t, dir, s.files, s.dirs)
					if dmg.cut && !errors.Is(errs["open"], blockfile.ErrDamaged) {
						t.Fatalf("OpenDirTable of a file of another size: %v", errs["open"])
					}
					for op, err := range errs {
						if err != nil && !errors.Is(err, blockfile.ErrDamaged) {
							t.Errorf("%s: %v, which does not wrap ErrDamaged", op, err)
						}
					}
					if errs["open"] != nil {
						return
					}
					// ScanReverse reads every block of both files;
					// Scan and LoadNames every block of the records.
					must := []string{"reverse"}
					if victim == DirsFile {
						must = append(must, "scan", "names", "get")
					}
					for _, op := range must {
						if !errors.Is(errs[op], blockfile.ErrDamaged) {
							t.Errorf("%s read the damaged table: %v", op, errs[op])
						}
					}
				}
			})
		}
	}
}

// TestWrongRecordCount: a plan or link file whose record count is not the
// one recorded is damaged when read from the start to the end (a resumed
// read, from an offset, cannot tell); a directory table whose counts
// disagree is refused.
func TestWrongRecordCount(t *testing.T) {
	s := buildState(t)
	dir := s.place(t, "", nil)
	for _, name := range []string{PlanFile, LinksFile} {
		for _, delta := range []int64{-1, 1, -s.files[name].Records} {
			t.Run(fmt.Sprintf("%s/%+d", name, delta), func(t *testing.T) {
				info := s.files[name]
				info.Records += delta
				recs, err := readFile(dir, name, info)
				if !errors.Is(err, blockfile.ErrDamaged) {
					t.Fatalf("%d records read for %d recorded: %v; want an error wrapping ErrDamaged", len(recs), info.Records, err)
				}
				if len(recs) != len(s.recs[name]) {
					t.Errorf("%d records before the error, %d in the file", len(recs), len(s.recs[name]))
				}
				// The error stays.
				r, err := OpenReader(dir, name, info, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				for err == nil {
					_, err = r.Next()
				}
				if _, err2 := r.Next(); !errors.Is(err, blockfile.ErrDamaged) || !errors.Is(err2, blockfile.ErrDamaged) {
					t.Errorf("Next at the end: %v, then %v", err, err2)
				}
			})
		}
	}
	// A file cut at a block boundary whose blocks all check out, and
	// whose recorded size is the cut one: its count still catches it.
	// (The error is a truncated frame, or the record count when the cut
	// falls between records.)
	for _, name := range []string{PlanFile, LinksFile} {
		t.Run(name+"/cut with its size recorded", func(t *testing.T) {
			for _, cut := range []int{blockfile.Block, 2 * blockfile.Block, lastBoundary(s.data[name])} {
				dir := s.place(t, name, func(b []byte) []byte { return b[:cut] })
				info := s.files[name]
				info.Size = int64(cut)
				if recs, err := readFile(dir, name, info); err == nil {
					t.Errorf("cut at %d: %d records of %d without an error", cut, len(recs), info.Records)
				}
			}
		})
	}
	t.Run("resumed read", func(t *testing.T) {
		info := s.files[PlanFile]
		r, err := OpenReader(dir, PlanFile, info, 0)
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			if _, err := r.Next(); err != nil {
				t.Fatal(err)
			}
		}
		off := r.Offset()
		r.Close()
		recs, err := readFile2(dir, PlanFile, info, off)
		if err != nil || len(recs) != len(s.recs[PlanFile])-10 || !bytes.Equal(recs[0], s.recs[PlanFile][10]) {
			t.Fatalf("resumed at record 10: %d records, %v", len(recs), err)
		}
	})
	for _, name := range []string{DirsFile, DirsIdxFile} {
		for _, delta := range []int64{-1, 1} {
			t.Run(fmt.Sprintf("%s/%+d", name, delta), func(t *testing.T) {
				files := map[string]blockfile.Info{}
				for k, v := range s.files {
					files[k] = v
				}
				info := files[name]
				info.Records += delta
				files[name] = info
				if tab, err := OpenDirTable(dir, files); !errors.Is(err, blockfile.ErrDamaged) {
					if tab != nil {
						tab.Close()
					}
					t.Fatalf("OpenDirTable with %s recorded as %+v: %v", name, info, err)
				}
			})
		}
	}
}

// readFile2 reads a plan or link file from offset to its end.
func readFile2(dir *fsx.Dir, name string, info blockfile.Info, offset int64) ([][]byte, error) {
	r, err := OpenReader(dir, name, info, offset)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var recs [][]byte
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		recs = append(recs, bytes.Clone(rec))
	}
}

// TestStateMissing: a state file that is missing, or a directory or a
// symlink under its name, is refused.
func TestStateMissing(t *testing.T) {
	s := buildState(t)
	for _, victim := range stateFiles {
		for _, kind := range []string{"missing", "directory", "symlink"} {
			t.Run(victim+"/"+kind, func(t *testing.T) {
				dir := s.place(t, "", nil)
				elsewhere := t.TempDir()
				if err := os.Rename(dir.Join(victim), elsewhere+"/"+victim); err != nil {
					t.Fatal(err)
				}
				switch kind {
				case "directory":
					if err := os.Mkdir(dir.Join(victim), 0o700); err != nil {
						t.Fatal(err)
					}
				case "symlink":
					// The intact file, but reached through a symlink.
					if err := os.Symlink(elsewhere+"/"+victim, dir.Join(victim)); err != nil {
						t.Fatal(err)
					}
				}
				var err error
				switch victim {
				case PlanFile, LinksFile:
					_, err = readFile(dir, victim, s.files[victim])
				default:
					err = dirTableOps(t, dir, s.files, s.dirs)["open"]
				}
				if err == nil {
					t.Fatalf("%s %s: read without an error", kind, victim)
				}
			})
		}
	}
}
