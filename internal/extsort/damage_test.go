package extsort

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
)

// flipRunByte flips one bit of the byte at off in run's file.
func flipRunByte(t testing.TB, run Run, off int64) {
	t.Helper()
	f, err := run.Dir.OpenRW(run.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// appendRunBytes appends p to run's file.
func appendRunBytes(t testing.TB, run Run, p []byte) {
	t.Helper()
	f, err := run.Dir.OpenRW(run.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, run.Size); err != nil {
		t.Fatal(err)
	}
}

// TestMergeDamage: a run file that was cut, grown or bit-flipped, or a Run
// whose Size or Records is not the one written, makes Merge (single-pass
// and multi-pass, on the first or the last run) and MergeStream fail with
// an error wrapping blockfile.ErrDamaged, and leaves no intermediate behind.
func TestMergeDamage(t *testing.T) {
	recs := randRecords(newRand(77), 6000, 50, nil, 0)
	tests := []struct {
		name   string
		damage func(t testing.TB, run *Run)
		ok     bool // no damage: the merge must succeed
	}{
		{name: "none", damage: func(testing.TB, *Run) {}, ok: true},
		{name: "cut-at-block-boundary", damage: func(t testing.TB, r *Run) { truncateRun(t, *r, 2*blockfile.Block) }},
		{name: "cut-at-last-block-start", damage: func(t testing.TB, r *Run) {
			truncateRun(t, *r, (r.Size-1)/blockfile.Block*blockfile.Block)
		}},
		{name: "cut-mid-block", damage: func(t testing.TB, r *Run) { truncateRun(t, *r, 2*blockfile.Block+100) }},
		{name: "cut-one-byte", damage: func(t testing.TB, r *Run) { truncateRun(t, *r, r.Size-1) }},
		{name: "cut-to-empty", damage: func(t testing.TB, r *Run) { truncateRun(t, *r, 0) }},
		{name: "grown", damage: func(t testing.TB, r *Run) { appendRunBytes(t, *r, []byte{0}) }},
		{name: "flip-first-byte", damage: func(t testing.TB, r *Run) { flipRunByte(t, *r, 0) }},
		{name: "flip-data-byte", damage: func(t testing.TB, r *Run) { flipRunByte(t, *r, blockfile.Block+100) }},
		{name: "flip-checksum-byte", damage: func(t testing.TB, r *Run) { flipRunByte(t, *r, 2*blockfile.Block-1) }},
		{name: "flip-last-byte", damage: func(t testing.TB, r *Run) { flipRunByte(t, *r, r.Size-1) }},
		{name: "records-one-more", damage: func(_ testing.TB, r *Run) { r.Records++ }},
		{name: "records-one-fewer", damage: func(_ testing.TB, r *Run) { r.Records-- }},
		{name: "records-zero", damage: func(_ testing.TB, r *Run) { r.Records = 0 }},
		{name: "size-one-more", damage: func(_ testing.TB, r *Run) { r.Size++ }},
		{name: "size-one-less", damage: func(_ testing.TB, r *Run) { r.Size-- }},
		{name: "size-block-less", damage: func(_ testing.TB, r *Run) { r.Size -= blockfile.Block }},
		{name: "size-block-more", damage: func(_ testing.TB, r *Run) { r.Size += blockfile.Block }},
	}
	for _, tc := range tests {
		for _, which := range []string{"first", "last"} {
			for _, mode := range []string{"single-pass", "multi-pass", "stream"} {
				t.Run(fmt.Sprintf("%s/%s/%s", tc.name, which, mode), func(t *testing.T) {
					runs := makeRuns(t, tempDir(t), recs, 64<<10)
					if len(runs) < 3 {
						t.Fatalf("only %d runs", len(runs))
					}
					for _, r := range runs {
						if r.Size < 4*blockfile.Block {
							t.Fatalf("run %s has only %d bytes: the cuts and flips need 4 blocks", r.Path(), r.Size)
						}
					}
					i := 0
					if which == "last" {
						i = len(runs) - 1
					}
					tc.damage(t, &runs[i])
					mem := 64 << 20
					if mode == "multi-pass" {
						mem = 0 // fan-in 2
					}
					tmp := tempDir(t)
					var err error
					var n int64
					if mode == "stream" {
						r, wait := MergeStream(runs, tmp, mem, nil)
						var rerr error
						for {
							if _, rerr = r.Next(); rerr != nil {
								break
							}
							n++
						}
						err = wait()
						if (rerr == io.EOF) != (err == nil) {
							t.Errorf("stream ended with %v but wait returned %v", rerr, err)
						}
					} else {
						n, err = Merge(runs, tmp, mem, io.Discard, nil)
					}
					if tc.ok {
						if err != nil || n != int64(len(recs)) {
							t.Fatalf("undamaged runs: %d records, %v", n, err)
						}
					} else if !errors.Is(err, blockfile.ErrDamaged) {
						t.Fatalf("err = %v, want one wrapping blockfile.ErrDamaged", err)
					}
					if left := listNames(t, tmp, "*"); len(left) > 0 {
						t.Fatalf("files left in tmp: %v", left)
					}
				})
			}
		}
	}
}

// modeOf is the type and permission bits of name in dir (not following a
// symlink).
func modeOf(t testing.TB, dir *fsx.Dir, name string) (typ, perm uint32) {
	t.Helper()
	st, err := dir.Lstat(name)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode & syscall.S_IFMT, st.Mode & 0o7777
}

// writerFunc calls fn before its first write.
type writerFunc struct {
	fn   func()
	done bool
}

func (w *writerFunc) Write(p []byte) (int, error) {
	if !w.done {
		w.done = true
		w.fn()
	}
	return len(p), nil
}

// TestRunFileMode: run files, and a multi-pass merge's intermediates, are
// regular files of mode 0600 whatever the umask.
func TestRunFileMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := tempDir(t)
	recs := randRecords(newRand(11), 3000, 40, nil, 0)
	runs := makeRuns(t, dir, recs, 8<<10)
	if len(runs) < 4 {
		t.Fatalf("only %d runs", len(runs))
	}
	for _, r := range runs {
		if typ, perm := modeOf(t, dir, r.Name); typ != syscall.S_IFREG || perm != 0o600 {
			t.Errorf("run %s: type %#o mode %#o, want a regular file of mode 0600", r.Path(), typ, perm)
		}
	}
	tmp := tempDir(t)
	seen := 0
	w := &writerFunc{fn: func() {
		// The final pass writes: the intermediates it reads still exist.
		for _, name := range listNames(t, tmp, "merge-*") {
			seen++
			if typ, perm := modeOf(t, tmp, name); typ != syscall.S_IFREG || perm != 0o600 {
				t.Errorf("intermediate %s: type %#o mode %#o, want a regular file of mode 0600", tmp.Join(name), typ, perm)
			}
		}
	}}
	if _, err := Merge(runs, tmp, 0, w, nil); err != nil {
		t.Fatal(err)
	}
	if seen == 0 {
		t.Error("no intermediate run seen during a fan-in 2 merge")
	}
}

// TestRunNotThroughSymlink: a symlink (to a file, or dangling) planted under
// the name of the next run file or intermediate is skipped, never written
// through nor removed, and the run gets the next free name.
func TestRunNotThroughSymlink(t *testing.T) {
	path := t.TempDir()
	outside := t.TempDir()
	target := filepath.Join(outside, "target")
	if err := os.WriteFile(target, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	absent := filepath.Join(outside, "absent")
	plant := map[string]string{ // name in the run directory -> symlink target
		"run-000000": target,
		"run-000001": absent,
	}
	for name, to := range plant {
		if err := os.Symlink(to, filepath.Join(path, name)); err != nil {
			t.Fatal(err)
		}
	}
	dir := testDir(t, path)
	recs := randRecords(newRand(13), 3000, 40, nil, 0)
	s := newSorter(dir, 8<<10, 4096, false)
	if err := s.AddBatch(recs); err != nil {
		t.Fatal(err)
	}
	runs, _ := finishAndMerge(t, s, recs, nil, 1<<20)
	if len(runs) < 4 {
		t.Fatalf("only %d runs", len(runs))
	}
	for i, r := range runs {
		if want := fmt.Sprintf("run-%06d", i+2); r.Name != want {
			t.Fatalf("run %d is named %s, want %s", i, r.Name, want)
		}
		if typ, _ := modeOf(t, dir, r.Name); typ != syscall.S_IFREG {
			t.Fatalf("run %s: type %#o, not a regular file", r.Path(), typ)
		}
	}

	// Intermediates of a multi-pass merge skip a planted merge-000000.
	tmpPath := t.TempDir()
	plant["merge-000000"] = target
	if err := os.Symlink(target, filepath.Join(tmpPath, "merge-000000")); err != nil {
		t.Fatal(err)
	}
	tmp := testDir(t, tmpPath)
	var buf bytes.Buffer
	if n, err := Merge(runs, tmp, 0, &buf, nil); err != nil || n != int64(len(recs)) {
		t.Fatalf("multi-pass merge: %d records, %v", n, err)
	}
	checkSame(t, readAll(t, buf.Bytes()), sortedCopy(recs))
	if left := listNames(t, tmp, "*"); !slices.Equal(left, []string{"merge-000000"}) {
		t.Fatalf("tmp holds %v after the merge, want only the planted symlink", left)
	}

	if data, err := os.ReadFile(target); err != nil || string(data) != "untouched" {
		t.Fatalf("symlink target written through: %q, %v", data, err)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("symlink target's mode changed: %v, %v", fi.Mode(), err)
	}
	if _, err := os.Lstat(absent); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dangling symlink's target was created: %v", err)
	}
	for name, to := range plant {
		p := filepath.Join(path, name)
		if name == "merge-000000" {
			p = filepath.Join(tmpPath, name)
		}
		if got, err := os.Readlink(p); err != nil || got != to {
			t.Fatalf("planted symlink %s: now %q, %v; want a symlink to %s", p, got, err, to)
		}
	}
}
