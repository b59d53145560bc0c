package plan

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/extsort"
	"hlcp/internal/fsx"
)

// sortedRecords finishes s and merges its runs into the records, in order.
func sortedRecords(t testing.TB, s *extsort.Sorter, tmp *fsx.Dir) [][]byte {
	t.Helper()
	runs, n, _, err := s.Finish()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	written, err := extsort.Merge(runs, tmp, 1<<20, &buf, nil)
	if err != nil || written != n {
		t.Fatalf("merge: %d records of %d, %v", written, n, err)
	}
	r := extsort.NewReader(&buf, 4<<10)
	var recs [][]byte
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return recs
		}
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, bytes.Clone(rec))
	}
}

type emitted struct {
	ents []Entry
	dirs []Dir
}

// emit feeds e worker w's share: dirs directories and ents entries, with
// a Flush after every flushEvery calls (0: only at the end). It may run on
// a goroutine of its own.
func emit(e *Emitter, w, dirs, ents, flushEvery int) (emitted, error) {
	var out emitted
	calls := 0
	call := func() error {
		if calls++; flushEvery > 0 && calls%flushEvery == 0 {
			return e.Flush()
		}
		return nil
	}
	for i := range max(dirs, ents) {
		if i < dirs {
			id := uint32(w*dirs + i)
			d := Dir{ID: id, Parent: id / 3, Dev: 9, Ino: uint64(id) * 11, Mode: unix.S_IFDIR | 0o755, Uid: 1000, Gid: 100,
				Atime: unix.Timespec{Sec: 1, Nsec: 999999999}, Mtime: unix.Timespec{Sec: int64(id), Nsec: 7},
				Flags: []uint8{0, DirMountSkipped, DirUnreadable, DirGone, DirMountPoint, DirMountPoint | DirUnreadable}[id%6],
				Name:  fmt.Appendf(nil, "d\n%d", id)}
			if id == 0 {
				d.Name = nil
			}
			if err := e.Dir(&d, []byte("rel/ignored")); err != nil {
				return out, err
			}
			out.dirs = append(out.dirs, d)
			if err := call(); err != nil {
				return out, err
			}
		}
		if i < ents {
			dev, ino := uint64(w+1), uint64(i/2+1) // pairs of links
			ent := Entry{Dev: dev, Ino: ino, Dir: uint32(i % 17), Type: []uint8{unix.DT_REG, unix.DT_LNK, unix.DT_FIFO}[i%3],
				Name: fmt.Appendf(nil, "entry-%d-%d-%s", w, i, bytes.Repeat([]byte{'y'}, i%40))}
			var st unix.Stat_t
			if err := e.Entry(ent.Dir, ent.Dev, ent.Ino, ent.Type, ent.Name, []byte("full/path"), &st); err != nil {
				return out, err
			}
			out.ents = append(out.ents, ent)
			if err := call(); err != nil {
				return out, err
			}
		}
	}
	return out, e.Flush()
}

// checkEmitted decodes the sorted records and compares them with what was
// emitted.
func checkEmitted(t testing.TB, ents, dirs [][]byte, want emitted) {
	t.Helper()
	if len(ents) != len(want.ents) || len(dirs) != len(want.dirs) {
		t.Fatalf("%d entries and %d directories sorted, %d and %d emitted", len(ents), len(dirs), len(want.ents), len(want.dirs))
	}
	wantEnts := make([][]byte, len(want.ents))
	for i, e := range want.ents {
		wantEnts[i] = AppendEntry(nil, e.Dev, e.Ino, e.Dir, e.Type, e.Name)
	}
	slices.SortFunc(wantEnts, bytes.Compare)
	for i, rec := range ents {
		got, err := DecodeEntry(rec)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		exp, _ := DecodeEntry(wantEnts[i])
		if got.Dev != exp.Dev || got.Ino != exp.Ino || got.Dir != exp.Dir || got.Type != exp.Type || !bytes.Equal(got.Name, exp.Name) {
			t.Fatalf("entry %d: %+v, want %+v", i, got, exp)
		}
	}
	byID := map[uint32]Dir{}
	for _, d := range want.dirs {
		byID[d.ID] = d
	}
	for i, rec := range dirs {
		var got Dir
		if err := DecodeDir(rec, &got); err != nil {
			t.Fatalf("directory %d: %v", i, err)
		}
		if got.ID != uint32(i) {
			t.Fatalf("directory %d sorted as id %d", i, got.ID)
		}
		exp := byID[got.ID]
		if !sameDir(&got, &exp) {
			t.Fatalf("directory %d: %+v, want %+v", i, got, exp)
		}
	}
}

// TestEmitter: what the scan emits reaches the two sorters, one record per
// call, and decodes back; entries pass the emitter's own flush threshold.
func TestEmitter(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dirs, ents int
		flushEvery int
		workers    int
	}{
		{"few", 5, 7, 0, 1},
		{"flushed often", 50, 80, 3, 1},
		{"entries only", 0, 30, 0, 1},
		{"directories only", 30, 0, 0, 1},
		{"past the entry buffer", 100, 12000, 0, 1},
		{"workers", 200, 5000, 97, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := tempDir(t)
			ents := extsort.New(subDir(t, tmp, "ents"), 1<<20, false)
			dirs := extsort.New(subDir(t, tmp, "dirs"), 1<<20, false)
			var (
				mu  sync.Mutex
				all emitted
				wg  sync.WaitGroup
			)
			errs := make([]error, tc.workers)
			for w := range tc.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					got, err := emit(NewEmitter(ents, dirs), w, tc.dirs, tc.ents, tc.flushEvery)
					errs[w] = err
					mu.Lock()
					all.ents = append(all.ents, got.ents...)
					all.dirs = append(all.dirs, got.dirs...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			for w, err := range errs {
				if err != nil {
					t.Fatalf("worker %d: %v", w, err)
				}
			}
			checkEmitted(t, sortedRecords(t, ents, tmp), sortedRecords(t, dirs, tmp), all)
		})
	}
}

// TestEmitterEntryThreshold: entries go to the sorter without a Flush once
// 256 KiB are buffered; directories only at Flush.
func TestEmitterEntryThreshold(t *testing.T) {
	tmp := tempDir(t)
	ents := extsort.New(subDir(t, tmp, "ents"), 4<<20, false)
	dirs := extsort.New(subDir(t, tmp, "dirs"), 4<<20, false)
	e := NewEmitter(ents, dirs)
	name := bytes.Repeat([]byte{'n'}, 1000)
	n := 0
	for size := 0; size < 256<<10; size += EntryHeader + len(name) {
		if err := e.Entry(1, 2, uint64(n), unix.DT_REG, name, nil, nil); err != nil {
			t.Fatal(err)
		}
		n++
	}
	d := Dir{ID: 0}
	if err := e.Dir(&d, nil); err != nil {
		t.Fatal(err)
	}
	// Without a Flush: the entries were handed over, the directory not.
	gotEnts := sortedRecords(t, ents, tmp)
	gotDirs := sortedRecords(t, dirs, tmp)
	if len(gotEnts) != n || len(gotDirs) != 0 {
		t.Fatalf("%d entries (of %d) and %d directories in the sorters before Flush", len(gotEnts), n, len(gotDirs))
	}
	for i, rec := range gotEnts {
		if e, err := DecodeEntry(rec); err != nil || e.Ino != uint64(i) || !bytes.Equal(e.Name, name) {
			t.Fatalf("entry %d: %+v, %v", i, e, err)
		}
	}
}
