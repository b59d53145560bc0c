package plan

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
)

type copiedRec struct {
	g     int64
	ctime unix.Timespec
	flags uint8
}

// copiedRecs are records of every flag and a ctime of every edge.
var copiedRecs = []copiedRec{
	{0, unix.Timespec{}, 0}, // all zero but its checksum: still a record
	{1, unix.Timespec{Sec: 1700000000, Nsec: 999999999}, 0},
	{2, unix.Timespec{Sec: 1700000001, Nsec: 1}, CopiedChanged},
	{3, unix.Timespec{Sec: 1, Nsec: 999999999}, CopiedMetaIncomplete},
	{4, unix.Timespec{Sec: 1<<62 + 5, Nsec: 999999999}, CopiedChanged | CopiedMetaIncomplete},
	{6, unix.Timespec{Sec: -1, Nsec: 500}, CopiedMetaIncomplete},
	{9, unix.Timespec{Sec: 42, Nsec: 0}, CopiedChanged | CopiedMetaIncomplete},
}

const copiedGroups = 10

// written says which groups copiedRecs fills.
func copiedWritten() map[int64]copiedRec {
	m := map[int64]copiedRec{}
	for _, r := range copiedRecs {
		m[r.g] = r
	}
	return m
}

// putCopied writes copiedRecs into c: the consecutive ones of groups 0..4
// in one PutRange, the others one by one.
func putCopied(t testing.TB, c *Copied) {
	t.Helper()
	var run []byte
	for _, r := range copiedRecs {
		if r.g <= 4 {
			run = AppendCopied(run, r.g, r.ctime, r.flags)
			continue
		}
		if err := c.PutRange(r.g, AppendCopied(nil, r.g, r.ctime, r.flags)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutRange(0, run); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
}

// checkCopied reads every group of c back.
func checkCopied(t testing.TB, c *Copied) {
	t.Helper()
	want := copiedWritten()
	for g := int64(0); g < copiedGroups; g++ {
		ctime, flags, ok, err := c.Get(g)
		if err != nil {
			t.Fatalf("Get(%d): %v", g, err)
		}
		w, written := want[g]
		if ok != written {
			t.Fatalf("Get(%d): ok %v, written %v", g, ok, written)
		}
		if !written {
			if ctime != (unix.Timespec{}) || flags != 0 {
				t.Errorf("Get(%d) of no record: %v, %d", g, ctime, flags)
			}
			continue
		}
		if ctime != w.ctime || flags != w.flags {
			t.Errorf("Get(%d) = %v, flags %d; written %v, flags %d", g, ctime, flags, w.ctime, w.flags)
		}
	}
}

func TestCopiedRoundTrip(t *testing.T) {
	dir := tempDir(t)
	c, info, err := CreateCopied(dir, copiedGroups)
	if err != nil {
		t.Fatal(err)
	}
	if info != (blockfile.Info{Size: copiedGroups * CopiedRecord, Records: copiedGroups}) {
		t.Fatalf("info %+v", info)
	}
	// Before any record: every group reads as none.
	for g := int64(0); g < copiedGroups; g++ {
		if _, _, ok, err := c.Get(g); ok || err != nil {
			t.Fatalf("Get(%d) of a new file: ok %v, %v", g, ok, err)
		}
	}
	putCopied(t, c)
	checkCopied(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// The records stay in the file.
	c, err = OpenCopied(dir, info)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkCopied(t, c)
	// A record rewritten replaces the one before.
	if err := c.PutRange(1, AppendCopied(nil, 1, unix.Timespec{Sec: 7, Nsec: 8}, CopiedChanged)); err != nil {
		t.Fatal(err)
	}
	if ctime, flags, ok, err := c.Get(1); err != nil || !ok || ctime != (unix.Timespec{Sec: 7, Nsec: 8}) || flags != CopiedChanged {
		t.Fatalf("rewritten record: %v, %d, %v, %v", ctime, flags, ok, err)
	}
}

// TestCopiedEncoding: a record is CopiedRecord bytes, and depends on its
// group, its ctime and each flag.
func TestCopiedEncoding(t *testing.T) {
	base := AppendCopied(nil, 3, unix.Timespec{Sec: 10, Nsec: 999999999}, 0)
	if len(base) != CopiedRecord {
		t.Fatalf("a record of %d bytes", len(base))
	}
	if got := AppendCopied([]byte("prefix"), 3, unix.Timespec{Sec: 10, Nsec: 999999999}, 0); string(got) != "prefix"+string(base) {
		t.Fatalf("AppendCopied after a prefix: %x", got)
	}
	others := map[string][]byte{
		"group":     AppendCopied(nil, 4, unix.Timespec{Sec: 10, Nsec: 999999999}, 0),
		"sec":       AppendCopied(nil, 3, unix.Timespec{Sec: 11, Nsec: 999999999}, 0),
		"nsec":      AppendCopied(nil, 3, unix.Timespec{Sec: 10, Nsec: 999999998}, 0),
		"changed":   AppendCopied(nil, 3, unix.Timespec{Sec: 10, Nsec: 999999999}, CopiedChanged),
		"meta":      AppendCopied(nil, 3, unix.Timespec{Sec: 10, Nsec: 999999999}, CopiedMetaIncomplete),
		"both":      AppendCopied(nil, 3, unix.Timespec{Sec: 10, Nsec: 999999999}, CopiedChanged|CopiedMetaIncomplete),
		"group far": AppendCopied(nil, 3+1<<32, unix.Timespec{Sec: 10, Nsec: 999999999}, 0),
	}
	seen := map[string]string{string(base): "base"}
	for name, rec := range others {
		if prev, dup := seen[string(rec)]; dup {
			t.Errorf("%s encodes as %s does", name, prev)
		}
		seen[string(rec)] = name
	}
}

// TestCopiedDamage: a record in another group's slot, or altered, is
// damage; so is a file whose size is not the one created.
func TestCopiedDamage(t *testing.T) {
	rawRecord := func(t *testing.T, dir string, g int64) []byte {
		f, err := os.Open(dir + "/" + CopiedFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, CopiedRecord)
		if _, err := f.ReadAt(b, g*CopiedRecord); err != nil {
			t.Fatal(err)
		}
		return b
	}
	writeRaw := func(t *testing.T, dir string, g int64, b []byte) {
		f, err := os.OpenFile(dir+"/"+CopiedFile, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b, g*CopiedRecord); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		group  int64 // the group that reads as damaged
	}{
		{"record copied to an untouched group", func(t *testing.T, dir string) { writeRaw(t, dir, 5, rawRecord(t, dir, 1)) }, 5},
		{"record copied over another", func(t *testing.T, dir string) { writeRaw(t, dir, 2, rawRecord(t, dir, 3)) }, 2},
		{"records swapped", func(t *testing.T, dir string) {
			a, b := rawRecord(t, dir, 1), rawRecord(t, dir, 2)
			writeRaw(t, dir, 1, b)
			writeRaw(t, dir, 2, a)
		}, 1},
		{"flipped seconds", func(t *testing.T, dir string) {
			b := rawRecord(t, dir, 1)
			b[7] ^= 1
			writeRaw(t, dir, 1, b)
		}, 1},
		{"flipped flag", func(t *testing.T, dir string) {
			b := rawRecord(t, dir, 3)
			b[8] ^= 0x80
			writeRaw(t, dir, 3, b)
		}, 3},
		{"flipped checksum", func(t *testing.T, dir string) {
			b := rawRecord(t, dir, 9)
			b[15] ^= 1
			writeRaw(t, dir, 9, b)
		}, 9},
		{"zeroed checksum", func(t *testing.T, dir string) {
			b := rawRecord(t, dir, 4)
			clear(b[12:])
			writeRaw(t, dir, 4, b)
		}, 4},
		{"half zeroed", func(t *testing.T, dir string) { writeRaw(t, dir, 6, make([]byte, 8)) }, 6},
		{"one byte in an untouched group", func(t *testing.T, dir string) { writeRaw(t, dir, 7, []byte{0, 0, 0, 1}) }, 7},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := t.TempDir()
			dir := testDir(t, path)
			c, info, err := CreateCopied(dir, copiedGroups)
			if err != nil {
				t.Fatal(err)
			}
			putCopied(t, c)
			c.Close()
			tc.damage(t, path)
			c, err = OpenCopied(dir, info)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctime, flags, ok, err := c.Get(tc.group)
			if !errors.Is(err, blockfile.ErrDamaged) {
				t.Fatalf("Get(%d) of a damaged record: %v, %d, ok %v, %v; want an error wrapping ErrDamaged", tc.group, ctime, flags, ok, err)
			}
			if ok || ctime != (unix.Timespec{}) || flags != 0 {
				t.Errorf("Get(%d) failed but returned %v, %d, ok %v", tc.group, ctime, flags, ok)
			}
			// The other groups are unharmed.
			want := copiedWritten()
			for g := int64(0); g < copiedGroups; g++ {
				if g == tc.group || (tc.name == "records swapped" && g == 2) {
					continue
				}
				ctime, flags, ok, err := c.Get(g)
				w, written := want[g]
				if err != nil || ok != written || ok && (ctime != w.ctime || flags != w.flags) {
					t.Errorf("Get(%d) of an intact group: %v, %d, ok %v, %v", g, ctime, flags, ok, err)
				}
			}
		})
	}
}

// TestCopiedSize: OpenCopied refuses a file whose size is not the one
// created, or an info that cannot be one.
func TestCopiedSize(t *testing.T) {
	cases := []struct {
		name   string
		resize func(size int64) int64 // the file's new size
		info   func(blockfile.Info) blockfile.Info
	}{
		{"truncated to 0", func(int64) int64 { return 0 }, nil},
		{"a record short", func(s int64) int64 { return s - CopiedRecord }, nil},
		{"a byte short", func(s int64) int64 { return s - 1 }, nil},
		{"a byte more", func(s int64) int64 { return s + 1 }, nil},
		{"a record more", func(s int64) int64 { return s + CopiedRecord }, nil},
		{"info size not records' size", nil, func(i blockfile.Info) blockfile.Info {
			i.Records--
			return i
		}},
		{"info of another size", nil, func(i blockfile.Info) blockfile.Info {
			i.Size += CopiedRecord
			i.Records++
			return i
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempDir(t)
			c, info, err := CreateCopied(dir, copiedGroups)
			if err != nil {
				t.Fatal(err)
			}
			putCopied(t, c)
			c.Close()
			if tc.resize != nil {
				if err := os.Truncate(dir.Join(CopiedFile), tc.resize(info.Size)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.info != nil {
				info = tc.info(info)
			}
			if c, err := OpenCopied(dir, info); !errors.Is(err, blockfile.ErrDamaged) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("OpenCopied: %v; want an error wrapping ErrDamaged", err)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		if c, err := OpenCopied(tempDir(t), blockfile.Info{Size: CopiedRecord, Records: 1}); err == nil {
			c.Close()
			t.Fatal("OpenCopied of no file")
		}
	})
	t.Run("no groups", func(t *testing.T) {
		dir := tempDir(t)
		c, info, err := CreateCopied(dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if info != (blockfile.Info{}) {
			t.Errorf("info %+v", info)
		}
		if err := c.PutRange(0, nil); err != nil {
			t.Errorf("PutRange of nothing: %v", err)
		}
		if _, _, _, err := c.Get(0); err == nil {
			t.Error("Get of a file of no groups")
		}
	})
}

// TestCopiedRange: records out of range are refused, and nothing is
// written.
func TestCopiedRange(t *testing.T) {
	dir := tempDir(t)
	c, info, err := CreateCopied(dir, copiedGroups)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rec := func(gs ...int64) []byte {
		var b []byte
		for _, g := range gs {
			b = AppendCopied(b, g, unix.Timespec{Sec: g}, 0)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		first int64
		recs  []byte
	}{
		{"negative", -1, rec(-1)},
		{"past the end", copiedGroups, rec(copiedGroups)},
		{"far past the end", 1 << 40, rec(1 << 40)},
		{"running past the end", copiedGroups - 1, rec(copiedGroups-1, copiedGroups)},
		{"a partial record", 0, rec(0)[:CopiedRecord-1]},
		{"a record and a half", 0, rec(0, 1)[:CopiedRecord*3/2]},
	} {
		if err := c.PutRange(tc.first, tc.recs); err == nil {
			t.Errorf("PutRange %s: no error", tc.name)
		}
	}
	for _, g := range []int64{-1, copiedGroups, 1 << 40} {
		if _, _, ok, err := c.Get(g); err == nil || ok {
			t.Errorf("Get(%d): ok %v, %v; want an error", g, ok, err)
		}
	}
	// Nothing was written, and the file kept its size.
	for g := int64(0); g < copiedGroups; g++ {
		if _, _, ok, err := c.Get(g); ok || err != nil {
			t.Errorf("Get(%d) after refused writes: ok %v, %v", g, ok, err)
		}
	}
	if fi, err := os.Stat(dir.Join(CopiedFile)); err != nil || fi.Size() != info.Size {
		t.Errorf("file size after refused writes: %v", err)
	}
	// The last group is in range.
	if err := c.PutRange(copiedGroups-1, rec(copiedGroups-1)); err != nil {
		t.Fatal(err)
	}
	if ctime, _, ok, err := c.Get(copiedGroups - 1); !ok || err != nil || ctime.Sec != copiedGroups-1 {
		t.Errorf("last group: %v, %v, %v", ctime, ok, err)
	}
}

// TestCreateCopiedReplaces: CreateCopied replaces a file a crash left, and
// the new one holds no record.
func TestCreateCopiedReplaces(t *testing.T) {
	dir := tempDir(t)
	c, _, err := CreateCopied(dir, copiedGroups)
	if err != nil {
		t.Fatal(err)
	}
	putCopied(t, c)
	c.Close()
	c, info, err := CreateCopied(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if fi, err := os.Stat(dir.Join(CopiedFile)); err != nil || fi.Size() != info.Size || info.Size != 3*CopiedRecord {
		t.Fatalf("replaced file: %v, info %+v", err, info)
	}
	for g := int64(0); g < 3; g++ {
		if _, _, ok, err := c.Get(g); ok || err != nil {
			t.Errorf("Get(%d) of the new file: ok %v, %v", g, ok, err)
		}
	}
}
