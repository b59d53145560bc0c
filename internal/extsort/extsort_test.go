package extsort

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
)

// ---- helpers ----

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

// randRecords returns n records of random length 0..maxLen over alphabet
// (all bytes if alphabet is empty); about dupPct percent are repeats of
// earlier records.
func randRecords(r *rand.Rand, n, maxLen int, alphabet []byte, dupPct int) [][]byte {
	recs := make([][]byte, 0, n)
	for range n {
		if len(recs) > 0 && r.IntN(100) < dupPct {
			recs = append(recs, recs[r.IntN(len(recs))])
			continue
		}
		rec := make([]byte, r.IntN(maxLen+1))
		if len(alphabet) > 0 {
			for i := range rec {
				rec[i] = alphabet[r.IntN(len(alphabet))]
			}
		} else {
			for i := 0; i < len(rec); i += 8 {
				var w [8]byte
				binary.LittleEndian.PutUint64(w[:], r.Uint64())
				copy(rec[i:], w[:])
			}
		}
		recs = append(recs, rec)
	}
	return recs
}

func sortedCopy(recs [][]byte) [][]byte {
	want := slices.Clone(recs)
	slices.SortFunc(want, bytes.Compare)
	return want
}

func totalBytes(recs [][]byte) int64 {
	var n int64
	for _, r := range recs {
		n += int64(len(r))
	}
	return n
}

// readAll parses a framed stream into copies of its records.
func readAll(t testing.TB, data []byte) [][]byte {
	t.Helper()
	rd := NewReader(bytes.NewReader(data), 4096)
	var out [][]byte
	for {
		rec, err := rd.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading merged output: %v", err)
		}
		out = append(out, bytes.Clone(rec))
	}
}

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

// readRun reads a run file's records back through its checksummed blocks,
// checking its size and record count against the Run.
func readRun(t testing.TB, run Run) [][]byte {
	t.Helper()
	f, err := run.Dir.Open(run.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != run.Size {
		t.Fatalf("run %s: %d bytes on disk, Run.Size %d", run.Path(), fi.Size(), run.Size)
	}
	br, err := blockfile.NewReader(f, run.Size, 0)
	if err != nil {
		t.Fatalf("run %s: %v", run.Path(), err)
	}
	data, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("run %s: %v", run.Path(), err)
	}
	recs := readAll(t, data)
	if int64(len(recs)) != run.Records {
		t.Fatalf("run %s: %d records, Run.Records %d", run.Path(), len(recs), run.Records)
	}
	return recs
}

func checkSame(t testing.TB, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d: got %q, want %q", i, trunc(got[i]), trunc(want[i]))
		}
	}
}

func trunc(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

// finishAndMerge finishes s, checks its counters against recs, checks every
// run is sorted, merges the runs and checks the output equals the sorted recs.
func finishAndMerge(t testing.TB, s *Sorter, recs [][]byte, tmp *fsx.Dir, mergeMem int) (runs []Run, out [][]byte) {
	t.Helper()
	runs, n, nb, err := s.Finish()
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if n != int64(len(recs)) || nb != totalBytes(recs) {
		t.Fatalf("Finish counted %d records / %d bytes, want %d / %d", n, nb, len(recs), totalBytes(recs))
	}
	for _, r := range runs {
		if !slices.IsSortedFunc(readRun(t, r), bytes.Compare) {
			t.Fatalf("run %s is not sorted", r.Path())
		}
	}
	var buf bytes.Buffer
	var last int64 = -1
	written, err := Merge(runs, tmp, mergeMem, &buf, func(done int64) {
		if done < last {
			t.Errorf("progress went backwards: %d after %d", done, last)
		}
		last = done
	})
	if err != nil {
		t.Fatalf("Merge: %v", err)
	}
	if written != int64(len(recs)) || last != written {
		t.Fatalf("Merge wrote %d records, last progress %d, want %d", written, last, len(recs))
	}
	out = readAll(t, buf.Bytes())
	checkSame(t, out, sortedCopy(recs))
	return runs, out
}

// ---- tests ----

func TestSortRandom(t *testing.T) {
	tests := []struct {
		name     string
		n        int
		maxLen   int
		alphabet []byte
		dupPct   int
		mem      int // New's budget; 0 means use bufSize
		bufSize  int // newSorter buffer size when mem == 0
		mergeMem int
		minRuns  int
	}{
		{name: "one-run", n: 3000, maxLen: 300, dupPct: 30, mem: 1 << 20, mergeMem: 1 << 20, minRuns: 1},
		{name: "many-runs", n: 200_000, maxLen: 300, dupPct: 30, mem: 1 << 20, mergeMem: 64 << 20, minRuns: 40},
		{name: "many-runs-multipass", n: 50_000, maxLen: 300, dupPct: 30, mem: 1 << 20, mergeMem: 0, minRuns: 10},
		{name: "small-alphabet", n: 100_000, maxLen: 20, alphabet: []byte{0, 1, 0xff}, dupPct: 10, mem: 1 << 20, mergeMem: 1 << 20, minRuns: 3},
		{name: "all-duplicates", n: 20_000, maxLen: 0, mem: 1 << 20, mergeMem: 1 << 20, minRuns: 1},
		{name: "tiny-buffers", n: 20_000, maxLen: 40, dupPct: 50, bufSize: 4096, mergeMem: 64 << 20, minRuns: 200},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			recs := randRecords(newRand(uint64(i)+1), tc.n, tc.maxLen, tc.alphabet, tc.dupPct)
			dir := tempDir(t)
			var s *Sorter
			if tc.mem > 0 {
				s = New(dir, tc.mem, false)
			} else {
				s = newSorter(dir, tc.bufSize, 4096, false)
			}
			for _, r := range recs {
				if err := s.Add(r); err != nil {
					t.Fatal(err)
				}
			}
			runs, _ := finishAndMerge(t, s, recs, tempDir(t), tc.mergeMem)
			if len(runs) < tc.minRuns {
				t.Errorf("got %d runs, want at least %d", len(runs), tc.minRuns)
			}
		})
	}
}

// shortRecords returns records around the 16-byte key boundary whose order
// depends on the zero padding of the prefix key.
func shortRecords() [][]byte {
	alphabet := []byte{0, 1, 'a', 0xff}
	var base [][]byte
	var gen func(prefix []byte, depth int)
	gen = func(prefix []byte, depth int) {
		base = append(base, bytes.Clone(prefix))
		if depth == 0 {
			return
		}
		for _, c := range alphabet {
			gen(append(prefix, c), depth-1)
		}
	}
	gen(nil, 3)
	var recs [][]byte
	for _, p := range []string{"", strings.Repeat("x", 13), strings.Repeat("\x00", 15), strings.Repeat("\xff", 16)} {
		for _, b := range base {
			recs = append(recs, append([]byte(p), b...))
		}
	}
	return recs
}

func TestCompareEntriesMatchesBytesCompare(t *testing.T) {
	recs := shortRecords()
	for _, fixed := range [][]byte{nil, {0}, []byte("a"), []byte("a\x00"), []byte("a\x00\x00"), []byte("ab"), []byte("ab\x00")} {
		recs = append(recs, fixed)
	}
	b := newBuffer(1 << 20)
	for _, r := range recs {
		if !b.fits(len(r)) {
			t.Fatal("test buffer too small")
		}
		b.add(r)
	}
	ents := slices.Clone(b.entries()) // entries are stored last-added first
	slices.Reverse(ents)
	for i := range ents {
		for j := range ents {
			got := compareEntries(b.arena, &ents[i], &ents[j])
			want := bytes.Compare(recs[i], recs[j])
			if got != want {
				t.Fatalf("compare(%q, %q) = %d, want %d", recs[i], recs[j], got, want)
			}
		}
	}
}

// TestSortEntries checks the in-memory index sort (radix passes plus
// comparison sort) against bytes.Compare on distributions that exercise each
// radix byte, skipped equal bytes, small buckets and the padding tie.
func TestSortEntries(t *testing.T) {
	tests := []struct {
		name      string
		n         int
		sharedLen int // bytes of a common prefix
		maxLen    int // random tail length
		alphabet  []byte
	}{
		{"random", 20_000, 0, 30, nil},
		{"shared-3", 20_000, 3, 30, nil},
		{"shared-8", 20_000, 8, 12, nil},
		{"shared-9", 20_000, 9, 12, nil},
		{"shared-15", 20_000, 15, 4, []byte{0, 1, 0xff}},
		{"shared-16", 20_000, 16, 6, []byte{0, 'a'}},
		{"shared-20", 5_000, 20, 6, nil},
		// Past the 16 key bytes: buckets keyed again from the records'
		// next 16 bytes (paths sharing long prefixes), zeros and ends
		// of records included.
		{"shared-32", 20_000, 32, 20, nil},
		{"shared-40-zeros", 20_000, 40, 30, []byte{0, 0, 1, 'a'}},
		{"shared-70", 20_000, 70, 40, []byte{0, '/', 'a', 'b'}},
		{"short-zeros-40", 20_000, 0, 40, []byte{0, 0, 0, 0, 0, 1}},
		{"short-zeros", 20_000, 0, 18, []byte{0, 0, 0, 1}},
		{"tiny", 50, 0, 20, []byte{0, 1}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRand(uint64(i) + 500)
			shared := bytes.Repeat([]byte{0x5a}, tc.sharedLen)
			tails := randRecords(r, tc.n, tc.maxLen, tc.alphabet, 10)
			b := newBuffer(8 << 20)
			for _, tail := range tails {
				rec := append(bytes.Clone(shared), tail...)
				if !b.fits(len(rec)) {
					t.Fatal("test buffer too small")
				}
				b.add(rec)
			}
			var recs [][]byte
			for _, e := range b.entries() {
				recs = append(recs, bytes.Clone(b.arena[e.off:e.off+e.n]))
			}
			b.sort()
			var got [][]byte
			for _, e := range b.entries() {
				got = append(got, b.arena[e.off:e.off+e.n])
			}
			checkSame(t, got, sortedCopy(recs))
		})
	}
}

func TestShortAndPrefixRecords(t *testing.T) {
	fixed := [][]byte{{}, {0}, []byte("a"), []byte("a\x00"), []byte("a\x00\x00"), []byte("ab"), []byte("ab\x00"),
		bytes.Repeat([]byte{0}, 16), bytes.Repeat([]byte{0}, 17), bytes.Repeat([]byte{0xff}, 15), bytes.Repeat([]byte{0xff}, 16)}
	tests := []struct {
		name    string
		recs    [][]byte
		copies  int
		bufSize int
	}{
		{"fixed-one-run", fixed, 1, 1 << 20},
		{"fixed-many-runs", fixed, 200, 2048},
		{"generated", shortRecords(), 3, 8192},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var recs [][]byte
			for range tc.copies {
				recs = append(recs, tc.recs...)
			}
			r := newRand(uint64(i) + 100)
			r.Shuffle(len(recs), func(a, b int) { recs[a], recs[b] = recs[b], recs[a] })
			s := newSorter(tempDir(t), tc.bufSize, 4096, false)
			if err := s.AddBatch(recs); err != nil {
				t.Fatal(err)
			}
			finishAndMerge(t, s, recs, tempDir(t), 1<<20)
		})
	}
}

func TestConcurrentAdd(t *testing.T) {
	t.Parallel()
	const workers, per = 8, 25_000
	s := New(tempDir(t), 1<<20, false)
	all := make([][][]byte, workers)
	var wg sync.WaitGroup
	for w := range workers {
		all[w] = randRecords(newRand(uint64(w)+1000), per, 120, nil, 20)
		wg.Go(func() {
			recs := all[w]
			if w%2 == 0 {
				for _, r := range recs {
					if err := s.Add(r); err != nil {
						t.Error(err)
						return
					}
				}
				return
			}
			for len(recs) > 0 {
				n := min(len(recs), 1+w*37)
				if err := s.AddBatch(recs[:n]); err != nil {
					t.Error(err)
					return
				}
				recs = recs[n:]
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	runs, _ := finishAndMerge(t, s, slices.Concat(all...), tempDir(t), 16<<20)
	if len(runs) < 10 {
		t.Errorf("only %d runs; the test should exercise spilling", len(runs))
	}
}

func TestGroupSamePrefix(t *testing.T) {
	t.Parallel()
	const groupN = 300_000
	prefix := []byte("GROUP-PREFIX-16B")
	r := newRand(7)
	recs := make([][]byte, 0, groupN+60_000)
	for range groupN {
		rec := append(bytes.Clone(prefix), make([]byte, r.IntN(12))...)
		for i := len(prefix); i < len(rec); i++ {
			rec[i] = byte(r.IntN(4)) // small alphabet: many duplicates and prefix ties
		}
		recs = append(recs, rec)
	}
	// Records just around the group: shorter prefixes of it, and neighbours.
	for i := range 60_000 {
		var rec []byte
		switch i % 4 {
		case 0:
			rec = bytes.Clone(prefix[:r.IntN(len(prefix))])
		case 1:
			rec = append(bytes.Clone(prefix[:15]), 'A', byte(r.Uint32()))
		case 2:
			rec = append(bytes.Clone(prefix[:15]), 'C', byte(r.Uint32()))
		default:
			rec = randRecords(r, 1, 40, nil, 0)[0]
		}
		recs = append(recs, rec)
	}
	r.Shuffle(len(recs), func(a, b int) { recs[a], recs[b] = recs[b], recs[a] })
	s := New(tempDir(t), 1<<20, false)
	if err := s.AddBatch(recs); err != nil {
		t.Fatal(err)
	}
	runs, out := finishAndMerge(t, s, recs, tempDir(t), 4<<20)
	if len(runs) < 10 {
		t.Errorf("group spans only %d runs", len(runs))
	}
	first := slices.IndexFunc(out, func(b []byte) bool { return bytes.HasPrefix(b, prefix) })
	if first < 0 {
		t.Fatal("group not found")
	}
	if first+groupN > len(out) {
		t.Fatalf("group starts at %d, too late", first)
	}
	for i := first; i < first+groupN; i++ {
		if !bytes.HasPrefix(out[i], prefix) {
			t.Fatalf("group not contiguous: record %d (%q) inside it", i, out[i])
		}
		if i > first && bytes.Compare(out[i-1], out[i]) > 0 {
			t.Fatalf("group out of order at %d", i)
		}
	}
	if end := first + groupN; end < len(out) && bytes.HasPrefix(out[end], prefix) {
		t.Fatalf("group has more than %d records", groupN)
	}
}

// makeRuns sorts recs into many small runs in dir.
func makeRuns(t testing.TB, dir *fsx.Dir, recs [][]byte, bufSize int) []Run {
	t.Helper()
	s := newSorter(dir, bufSize, 4096, false)
	if err := s.AddBatch(recs); err != nil {
		t.Fatal(err)
	}
	runs, _, _, err := s.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

// listNames returns the names in dir that match pattern.
func listNames(t testing.TB, dir *fsx.Dir, pattern string) []string {
	t.Helper()
	names, err := dir.Names()
	if err != nil {
		t.Fatal(err)
	}
	var m []string
	for _, name := range names {
		ok, err := filepath.Match(pattern, name)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			m = append(m, name)
		}
	}
	slices.Sort(m)
	return m
}

func TestMultiPassMerge(t *testing.T) {
	recs := randRecords(newRand(42), 20_000, 60, []byte("ab\x00"), 20)
	want := sortedCopy(recs)
	runDir := tempDir(t)
	runs := makeRuns(t, runDir, recs, 16<<10)
	if len(runs) < 40 {
		t.Fatalf("only %d runs", len(runs))
	}
	tests := []struct {
		name      string
		mem       int
		multiPass bool
		tmpDir    bool // use a separate tmp directory, else nil
	}{
		{"fan-in-2", 0, true, true},
		{"fan-in-4", 5 * minMergeBuf, true, true},
		{"fan-in-7-default-tmpdir", 8 * minMergeBuf, true, false},
		{"single-pass", 64 << 20, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, fanIn := mergePlan(tc.mem, len(runs))
			if got := fanIn < len(runs); got != tc.multiPass {
				t.Fatalf("fan-in %d for %d runs: multi-pass %v, want %v", fanIn, len(runs), got, tc.multiPass)
			}
			var tmp *fsx.Dir
			if tc.tmpDir {
				tmp = tempDir(t)
			}
			var buf bytes.Buffer
			calls := 0
			n, err := Merge(runs, tmp, tc.mem, &buf, func(int64) { calls++ })
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(recs)) || calls == 0 {
				t.Fatalf("Merge returned %d (want %d), %d progress calls", n, len(recs), calls)
			}
			checkSame(t, readAll(t, buf.Bytes()), want)
			for _, d := range []*fsx.Dir{tmp, runDir} {
				if d != nil {
					if left := listNames(t, d, "merge-*"); len(left) > 0 {
						t.Fatalf("intermediates left behind: %v", left)
					}
				}
			}
			for _, r := range runs {
				if _, err := r.Dir.Lstat(r.Name); err != nil {
					t.Fatalf("input run removed: %v", err)
				}
			}
		})
	}
}

// TestMergeFramesAboveBuffer merges runs whose records are larger than the
// per-run read buffer (minMergeBuf), in several passes: the readers must grow.
func TestMergeFramesAboveBuffer(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	var recs [][]byte
	for i := range 40 {
		n := rng.IntN(MaxRecord + 1)
		if i%5 == 0 {
			n = MaxRecord
		}
		r := make([]byte, n)
		for j := range r {
			r[j] = byte(rng.IntN(4))
		}
		recs = append(recs, r)
	}
	if MaxRecord <= minMergeBuf {
		t.Fatalf("MaxRecord %d fits minMergeBuf %d: nothing to test", MaxRecord, minMergeBuf)
	}
	runs := makeRuns(t, tempDir(t), recs, 3*MaxRecord)
	if len(runs) < 4 {
		t.Fatalf("only %d runs", len(runs))
	}
	var buf bytes.Buffer
	if _, err := Merge(runs, tempDir(t), 0, &buf, nil); err != nil {
		t.Fatal(err)
	}
	checkSame(t, readAll(t, buf.Bytes()), sortedCopy(recs))
}

// TestMergeFileLimit: a budget that allows a fan-in above the open-file
// limit merges in passes instead of failing with EMFILE.
func TestMergeFileLimit(t *testing.T) {
	recs := benchRecords(20000)
	runs := makeRuns(t, tempDir(t), recs, 8<<10)
	if len(runs) < 150 {
		t.Fatalf("only %d runs", len(runs))
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = 128
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower the file limit: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	if _, fanIn := mergePlan(64<<20, len(runs)); fanIn < len(runs) || maxOpenRuns() > 32 {
		t.Fatalf("fan-in %d for %d runs, maxOpenRuns %d: the test needs a budget above the limit", fanIn, len(runs), maxOpenRuns())
	}
	var buf bytes.Buffer
	if _, err := Merge(runs, tempDir(t), 64<<20, &buf, nil); err != nil {
		t.Fatal(err)
	}
	checkSame(t, readAll(t, buf.Bytes()), sortedCopy(recs))
}

func TestMergePlan(t *testing.T) {
	tests := []struct{ mem, runs, wantFanIn int }{
		{0, 100, 2},
		{1 << 20, 100, 31},
		{4 << 20, 200, 127},
		{64 << 20, 10, 63},
		{64 << 20, 1000, 1000},
		{64 << 20, 3000, 2047},
		{1 << 30, 3, 1023},
	}
	for _, tc := range tests {
		buf, fanIn := mergePlan(tc.mem, tc.runs)
		if fanIn != tc.wantFanIn {
			t.Errorf("mergePlan(%d, %d): fan-in %d, want %d", tc.mem, tc.runs, fanIn, tc.wantFanIn)
		}
		if buf < minMergeBuf || buf > maxMergeBuf {
			t.Errorf("mergePlan(%d, %d): buffer %d out of range", tc.mem, tc.runs, buf)
		}
		if used := (min(fanIn, tc.runs) + 1) * buf; tc.mem >= 3*minMergeBuf && used > tc.mem {
			t.Errorf("mergePlan(%d, %d): uses %d bytes", tc.mem, tc.runs, used)
		}
	}
}

func TestNoPerRecordAllocs(t *testing.T) {
	recs := benchRecords(1 << 12)
	s := New(tempDir(t), 64<<20, false)
	i := 0
	s.Add(recs[0]) // allocates the first buffer
	if a := testing.AllocsPerRun(5000, func() {
		s.Add(recs[i%len(recs)])
		i++
	}); a != 0 {
		t.Errorf("Add: %v allocations per record", a)
	}
	if a := testing.AllocsPerRun(100, func() {
		s.AddBatch(recs[:64])
	}); a != 0 {
		t.Errorf("AddBatch: %v allocations per batch", a)
	}
	if _, _, _, err := s.Finish(); err != nil {
		t.Fatal(err)
	}
	// Merge allocates per run and per call, not per record.
	const n = 50_000
	runs := makeRuns(t, tempDir(t), benchRecords(n), 128<<10)
	allocs := testing.AllocsPerRun(2, func() {
		if _, err := Merge(runs, nil, 64<<20, io.Discard, nil); err != nil {
			t.Fatal(err)
		}
	})
	if limit := 20*len(runs) + 50; allocs > float64(limit) || len(runs) < 10 {
		t.Errorf("Merge of %d records from %d runs: %v allocations", n, len(runs), allocs)
	}
}

// truncateRun cuts the file of run to size bytes (the Run is unchanged).
func truncateRun(t testing.TB, run Run, size int64) {
	t.Helper()
	f, err := run.Dir.OpenRW(run.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// sealedRun writes stream, sealed in blocks as a run file is, to a new file
// name in dir and returns it as a Run of records records.
func sealedRun(t testing.TB, dir *fsx.Dir, name string, stream []byte, records int64) Run {
	t.Helper()
	f, err := dir.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bw := blockfile.NewWriter(f)
	if _, err := bw.Write(stream); err != nil {
		t.Fatal(err)
	}
	if err := bw.Close(); err != nil {
		t.Fatal(err)
	}
	return Run{Dir: dir, Name: name, Size: bw.Size(), Records: records}
}

func TestMergeErrors(t *testing.T) {
	recs := randRecords(newRand(5), 5000, 50, nil, 0)
	runs := makeRuns(t, tempDir(t), recs, 8<<10)
	// Truncate the last run by a byte (mid-frame and mid-block): the final
	// pass of a multi-pass merge (smallest runs go first) or any pass must
	// fail and clean up.
	last := runs[len(runs)-1]
	truncateRun(t, last, last.Size-1)
	for _, mem := range []int{0, 64 << 20} {
		tmp := tempDir(t)
		_, err := Merge(runs, tmp, mem, io.Discard, nil)
		if !errors.Is(err, blockfile.ErrDamaged) {
			t.Fatalf("mem %d: Merge of truncated run: err = %v, want ErrDamaged", mem, err)
		}
		if left := listNames(t, tmp, "*"); len(left) > 0 {
			t.Fatalf("mem %d: files left in tmp after error: %v", mem, left)
		}
	}
	// A run whose blocks check out but whose frames stop mid-frame (so no
	// check of the sealing sees it) still fails as a truncated frame.
	dir := tempDir(t)
	good := makeRuns(t, dir, recs[:1000], 8<<10)
	stream := slices.Concat(AppendFrame(nil, []byte("a")), AppendFrame(nil, []byte("bcdef")))
	cut := sealedRun(t, dir, "cut-frame", stream[:len(stream)-1], 2)
	for _, mem := range []int{0, 64 << 20} {
		tmp := tempDir(t)
		_, err := Merge(append(slices.Clone(good), cut), tmp, mem, io.Discard, nil)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("mem %d: Merge of a run cut mid-frame: err = %v, want ErrUnexpectedEOF", mem, err)
		}
		if left := listNames(t, tmp, "*"); len(left) > 0 {
			t.Fatalf("mem %d: files left in tmp after error: %v", mem, left)
		}
	}
	if _, err := Merge([]Run{{Dir: tempDir(t), Name: "missing"}}, nil, 0, io.Discard, nil); err == nil {
		t.Fatal("Merge of a missing run succeeded")
	}
}

func TestEdgeCases(t *testing.T) {
	big := bytes.Repeat([]byte{0xab}, MaxRecord)
	big[0] = 0x01
	tests := []struct {
		name string
		recs [][]byte
	}{
		{"zero", nil},
		{"one", [][]byte{[]byte("only")}},
		{"one-empty", [][]byte{{}}},
		{"max-record", [][]byte{big, []byte("z"), big[:MaxRecord-1], {}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempDir(t)
			s := New(dir, 0, true)
			for _, r := range tc.recs {
				if err := s.Add(r); err != nil {
					t.Fatal(err)
				}
			}
			runs, _ := finishAndMerge(t, s, tc.recs, tempDir(t), 0)
			if (len(runs) == 0) != (len(tc.recs) == 0) {
				t.Fatalf("%d records gave %d runs", len(tc.recs), len(runs))
			}
		})
	}
}

func TestOversizeAndFinished(t *testing.T) {
	s := New(tempDir(t), 1<<20, false)
	if err := s.Add(make([]byte, MaxRecord+1)); err == nil {
		t.Fatal("oversize Add accepted")
	}
	err := s.AddBatch([][]byte{[]byte("a"), make([]byte, MaxRecord+1), []byte("b")})
	if err == nil {
		t.Fatal("oversize AddBatch accepted")
	}
	if err := s.Add(make([]byte, MaxRecord)); err != nil {
		t.Fatalf("MaxRecord-sized Add: %v", err)
	}
	runs, n, nb, err := s.Finish()
	if err != nil || n != 2 || nb != MaxRecord+1 || len(runs) != 1 {
		t.Fatalf("Finish = %v, %d, %d, %v; want 1 run, 2 records, %d bytes", runs, n, nb, err, MaxRecord+1)
	}
	if err := s.Add([]byte("x")); err == nil {
		t.Fatal("Add after Finish accepted")
	}
	if _, _, _, err := s.Finish(); err == nil {
		t.Fatal("second Finish succeeded")
	}
	// Zero-record merge writes nothing and still reports progress.
	var buf bytes.Buffer
	var got int64 = -1
	if n, err := Merge(nil, nil, 0, &buf, func(d int64) { got = d }); err != nil || n != 0 || buf.Len() != 0 || got != 0 {
		t.Fatalf("empty Merge = %d, %v, %d bytes, progress %d", n, err, buf.Len(), got)
	}
}

func TestRunFiles(t *testing.T) {
	path := t.TempDir()
	existing := filepath.Join(path, "run-000000")
	if err := os.WriteFile(existing, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := testDir(t, path)
	recs := randRecords(newRand(9), 2000, 30, nil, 0)
	s := newSorter(dir, 8<<10, 4096, true)
	if err := s.AddBatch(recs); err != nil {
		t.Fatal(err)
	}
	runs, _ := finishAndMerge(t, s, recs, nil, 1<<20)
	if len(runs) < 3 {
		t.Fatalf("only %d runs", len(runs))
	}
	for i, r := range runs {
		if want := fmt.Sprintf("run-%06d", i+1); r.Name != want || r.Dir != dir {
			t.Fatalf("run %d is %s, want %s", i, r.Path(), filepath.Join(path, want))
		}
		if want := filepath.Join(path, r.Name); r.Path() != want {
			t.Fatalf("run %d: Path %s, want %s", i, r.Path(), want)
		}
	}
	if data, err := os.ReadFile(existing); err != nil || string(data) != "keep" {
		t.Fatalf("pre-existing run file clobbered: %q, %v", data, err)
	}
	// A sorter whose directory is gone (removed after it was opened)
	// reports the spill error.
	if err := os.Mkdir(filepath.Join(path, "missing"), 0o700); err != nil {
		t.Fatal(err)
	}
	gone := testDir(t, filepath.Join(path, "missing"))
	if err := os.Remove(filepath.Join(path, "missing")); err != nil {
		t.Fatal(err)
	}
	s = newSorter(gone, 4096, 4096, false)
	var addErr error
	for i := 0; i < 1000 && addErr == nil; i++ {
		addErr = s.Add([]byte("some record"))
	}
	_, _, _, finErr := s.Finish()
	if addErr == nil && finErr == nil {
		t.Fatal("spill into a missing directory did not fail")
	}
}

func frames(recs [][]byte) (stream []byte, ends []int64) {
	for _, r := range recs {
		stream = AppendFrame(stream, r)
		ends = append(ends, int64(len(stream)))
	}
	return stream, ends
}

func TestReader(t *testing.T) {
	var recs [][]byte
	for _, n := range []int{0, 1, 127, 128, 300, 16383, 16384, 0, MaxRecord, 5} {
		rec := make([]byte, n)
		for i := range rec {
			rec[i] = byte(i * 7)
		}
		recs = append(recs, rec)
	}
	stream, ends := frames(recs)
	wrappers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"plain", func(r io.Reader) io.Reader { return r }},
		{"one-byte", iotest.OneByteReader},
		{"half", iotest.HalfReader},
		{"data-err", iotest.DataErrReader},
	}
	for _, w := range wrappers {
		for _, bufSize := range []int{1, 100, 4096, 1 << 20} {
			t.Run(fmt.Sprintf("%s/buf%d", w.name, bufSize), func(t *testing.T) {
				rd := NewReader(w.wrap(bytes.NewReader(stream)), bufSize)
				if rd.Offset() != 0 {
					t.Fatalf("initial Offset %d", rd.Offset())
				}
				for i, want := range recs {
					got, err := rd.Next()
					if err != nil {
						t.Fatalf("record %d: %v", i, err)
					}
					if !bytes.Equal(got, want) {
						t.Fatalf("record %d: wrong content (len %d, want %d)", i, len(got), len(want))
					}
					if rd.Offset() != ends[i] {
						t.Fatalf("after record %d: Offset %d, want %d", i, rd.Offset(), ends[i])
					}
				}
				for range 2 {
					if _, err := rd.Next(); err != io.EOF {
						t.Fatalf("at end: err = %v, want io.EOF", err)
					}
				}
				if cap(rd.buf) > max(bufSize, maxFrame) {
					t.Fatalf("buffer grew to %d", cap(rd.buf))
				}
			})
		}
	}
}

func TestReaderTruncated(t *testing.T) {
	recs := [][]byte{[]byte("hello"), {}, bytes.Repeat([]byte("x"), 200), []byte("end")}
	stream, ends := frames(recs)
	for cut := 0; cut < len(stream); cut++ {
		rd := NewReader(bytes.NewReader(stream[:cut]), 64)
		var err error
		n := 0
		for err == nil {
			if _, err = rd.Next(); err == nil {
				n++
			}
		}
		atBoundary := cut == 0 || slices.Contains(ends, int64(cut))
		switch {
		case atBoundary && err != io.EOF:
			t.Fatalf("cut %d at a frame boundary: err = %v, want io.EOF", cut, err)
		case !atBoundary && !errors.Is(err, io.ErrUnexpectedEOF):
			t.Fatalf("cut %d inside a frame: err = %v, want ErrUnexpectedEOF", cut, err)
		}
		if n > 0 && rd.Offset() != ends[n-1] {
			t.Fatalf("cut %d: Offset %d after %d records, want %d", cut, rd.Offset(), n, ends[n-1])
		}
	}
}

func TestReaderBadFrames(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"length-over-max", append(binary.AppendUvarint(nil, MaxRecord+1), make([]byte, MaxRecord+1)...)},
		{"huge-length", binary.AppendUvarint(nil, 1<<62)},
		{"varint-overflow", bytes.Repeat([]byte{0xff}, 11)},
		{"after-good-frame", append(AppendFrame(nil, []byte("ok")), binary.AppendUvarint(nil, 1<<40)...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rd := NewReader(bytes.NewReader(tc.data), 64)
			var err error
			for err == nil {
				_, err = rd.Next()
			}
			if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("err = %v, want a frame error", err)
			}
			if cap(rd.buf) > maxFrame {
				t.Fatalf("buffer grew to %d", cap(rd.buf))
			}
		})
	}
	boom := errors.New("boom")
	rd := NewReader(io.MultiReader(bytes.NewReader(AppendFrame(nil, []byte("a"))), iotest.ErrReader(boom)), 64)
	if _, err := rd.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := rd.Next(); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
}

func TestAppendFrame(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, MaxRecord} {
		rec := bytes.Repeat([]byte{'r'}, n)
		got := AppendFrame([]byte("pre"), rec)
		want := append(binary.AppendUvarint([]byte("pre"), uint64(n)), rec...)
		if !bytes.Equal(got, want) {
			t.Fatalf("len %d: bad frame", n)
		}
	}
}

// ---- fuzz ----

func FuzzReader(f *testing.F) {
	f.Add([]byte{})
	f.Add(AppendFrame(AppendFrame(nil, []byte("abc")), nil))
	f.Add([]byte{0x80})
	f.Add(binary.AppendUvarint(nil, MaxRecord))
	f.Add(binary.AppendUvarint(nil, MaxRecord+1))
	f.Add(bytes.Repeat([]byte{0xff}, 12))
	f.Add([]byte{0x80, 0x00, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := NewReader(bytes.NewReader(data), 16)
		pos := 0
		for {
			rec, err := rd.Next()
			if cap(rd.buf) > maxFrame {
				t.Fatalf("buffer grew to %d", cap(rd.buf))
			}
			// Reference: decode the frame at pos directly.
			n, k := binary.Uvarint(data[pos:])
			valid := k > 0 && n <= MaxRecord && uint64(len(data)-pos-k) >= n
			if err != nil {
				if valid {
					t.Fatalf("offset %d: valid frame rejected: %v", pos, err)
				}
				if (err == io.EOF) != (pos == len(data)) {
					t.Fatalf("offset %d of %d: err = %v", pos, len(data), err)
				}
				if _, err2 := rd.Next(); err2 == nil {
					t.Fatal("error not sticky")
				}
				return
			}
			if !valid {
				t.Fatalf("offset %d: invalid frame accepted", pos)
			}
			end := pos + k + int(n)
			if !bytes.Equal(rec, data[pos+k:end]) || rd.Offset() != int64(end) {
				t.Fatalf("offset %d: wrong record or Offset %d (want %d)", pos, rd.Offset(), end)
			}
			pos = end
		}
	})
}

// splitRecords cuts data into records: each starts with a length byte
// (mod 24) followed by that many bytes, cut short at the end of data.
func splitRecords(data []byte) [][]byte {
	var recs [][]byte
	for len(data) > 0 {
		n := min(int(data[0]%24), len(data)-1)
		recs = append(recs, data[1:1+n])
		data = data[1+n:]
	}
	return recs
}

func FuzzSortOrder(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x02ab\x03ab\x00\x00\x01a\x00"))
	f.Add([]byte("\x10aaaaaaaaaaaaaaaa\x11aaaaaaaaaaaaaaaa\x00\x0faaaaaaaaaaaaaaa"))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs := splitRecords(data)
		// Tiny buffers force several runs; merge memory 0 forces fan-in 2.
		s := newSorter(tempDir(t), 512, 4096, false)
		if err := s.AddBatch(recs); err != nil {
			t.Fatal(err)
		}
		finishAndMerge(t, s, recs, nil, 0)
	})
}

// ---- benchmarks ----

func benchRecords(n int) [][]byte {
	recs := make([][]byte, n)
	for i := range recs {
		recs[i] = make([]byte, 40)
		benchRecord(recs[i], uint64(i))
	}
	return recs
}

// benchRecord fills rec (40 bytes) with a distinct pseudo-random record for i:
// a shared 3-byte prefix (like a big-endian key with small high bytes), then
// hashed bytes.
func benchRecord(rec []byte, i uint64) {
	h := i * 0x9e3779b97f4a7c15
	h ^= h >> 29
	binary.BigEndian.PutUint64(rec, h>>24)
	binary.BigEndian.PutUint64(rec[8:], h*0xbf58476d1ce4e5b9)
	binary.BigEndian.PutUint64(rec[16:], i)
}

func BenchmarkAdd(b *testing.B) {
	s := New(tempDir(b), 64<<20, false)
	rec := make([]byte, 40)
	b.SetBytes(40)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		benchRecord(rec, uint64(i))
		if err := s.Add(rec); err != nil {
			b.Fatal(err)
		}
	}
	if _, _, _, err := s.Finish(); err != nil { // includes the final spill
		b.Fatal(err)
	}
}

func BenchmarkAddBatch(b *testing.B) {
	s := New(tempDir(b), 64<<20, false)
	batch := make([][]byte, 256)
	for j := range batch {
		batch[j] = make([]byte, 40)
	}
	b.SetBytes(40)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(batch) {
		n := min(len(batch), b.N-i)
		for j := range n {
			benchRecord(batch[j], uint64(i+j))
		}
		if err := s.AddBatch(batch[:n]); err != nil {
			b.Fatal(err)
		}
	}
	if _, _, _, err := s.Finish(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkAddParallel(b *testing.B) {
	s := New(tempDir(b), 64<<20, false)
	var seq atomic.Uint64
	b.SetBytes(40)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rec := make([]byte, 40)
		base := seq.Add(1) << 40
		i := uint64(0)
		for pb.Next() {
			benchRecord(rec, base+i)
			if err := s.Add(rec); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	if _, _, _, err := s.Finish(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkMerge(b *testing.B) {
	const n = 1 << 20
	s := New(tempDir(b), 8<<20, false)
	rec := make([]byte, 40)
	for i := range uint64(n) {
		benchRecord(rec, i)
		if err := s.Add(rec); err != nil {
			b.Fatal(err)
		}
	}
	runs, _, _, err := s.Finish()
	if err != nil {
		b.Fatal(err)
	}
	tmp := tempDir(b)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := Merge(runs, tmp, 64<<20, io.Discard, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/record")
	b.ReportMetric(float64(len(runs)), "runs")
}

// TestMergeStream: the stream yields every record in order and wait reports
// success; abandoning it early stops the merge instead of hanging.
func TestMergeStream(t *testing.T) {
	dir := tempDir(t)
	s := newSorter(dir, 4096, 4096, false) // tiny buffers: many runs
	const n = 5000
	for i := 0; i < n; i++ {
		if err := s.Add([]byte(fmt.Sprintf("%08d", (i*7919)%n))); err != nil {
			t.Fatal(err)
		}
	}
	runs, _, _, err := s.Finish()
	if err != nil || len(runs) < 2 {
		t.Fatalf("%d runs, %v", len(runs), err)
	}
	r, wait := MergeStream(runs, dir, 1<<20, nil)
	for i := 0; ; i++ {
		rec, err := r.Next()
		if err == io.EOF {
			if i != n {
				t.Fatalf("%d records, want %d", i, n)
			}
			break
		}
		if err != nil || string(rec) != fmt.Sprintf("%08d", i) {
			t.Fatalf("record %d: %q, %v", i, rec, err)
		}
	}
	if err := wait(); err != nil {
		t.Fatalf("wait after the end: %v", err)
	}
	r, wait = MergeStream(runs, dir, 1<<20, nil)
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- wait() }()
	select {
	case <-done: // an error (closed pipe) or nil, but no hang
	case <-time.After(10 * time.Second):
		t.Fatal("wait hangs when the stream is abandoned")
	}
}

// BenchmarkSortPaths sorts records shaped like a snapshot repository's
// paths, which share long prefixes: the case the re-keyed radix is for.
func BenchmarkSortPaths(b *testing.B) {
	r := newRand(7)
	var recs [][]byte
	for i := 0; i < 200_000; i++ {
		recs = append(recs, fmt.Appendf(nil, "daily.%02d/host%02d/d%d/d%d/file-%06d.dat", r.IntN(20), r.IntN(4), r.IntN(8), r.IntN(8), r.IntN(1_000_000)))
	}
	buf := newBuffer(64 << 20)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		buf.reset()
		for _, rec := range recs {
			buf.add(rec)
		}
		b.StartTimer()
		buf.sort()
	}
}
