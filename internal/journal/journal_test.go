package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
)

// newPlace is the place of a state directory name in a new temporary
// directory (the parent fd stays open for the test).
func newPlace(t *testing.T, name string, inDst bool) Place {
	t.Helper()
	base := t.TempDir()
	fd, err := unix.Open(base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return Place{Parent: fd, Name: name, Path: filepath.Join(base, name), InDst: inDst}
}

// base is the directory that holds the state directory of p.
func (p Place) base() string { return filepath.Dir(p.Path) }

// mustCreate creates a job at p and closes it at the end of the test.
func mustCreate(t *testing.T, p Place, id Identity) *Journal {
	t.Helper()
	j, err := Create(p, id)
	if err != nil {
		t.Fatalf("Create(%s): %v", p.Path, err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

var testID = Identity{Command: "copy", Src: "/a", Dst: "/b", SrcDev: 1, SrcIno: 2, DstDev: 3, DstIno: 4, Options: "x"}

func TestCreateSaveOpen(t *testing.T) {
	p := newPlace(t, "state", false)
	j := mustCreate(t, p, testID)
	if k, err := Create(p, testID); err == nil {
		k.Close()
		t.Fatal("Create over an existing state must fail")
	}
	writeFile(t, j.Join("plan"), make([]byte, 5))
	j.Phase, j.Watermark = PhaseCopy, 12345
	j.EntryRuns = []Run{{Name: "run-000000", Size: 10, Records: 2}}
	j.Files = map[string]blockfile.Info{"plan": {Size: 5, Records: 1}}
	if err := j.Save(); err != nil {
		t.Fatal(err)
	}
	k, err := Open(p, false)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if k.ID != testID || k.Phase != PhaseCopy || k.Watermark != 12345 || k.Version != Version || k.Attempts != 1 ||
		!reflect.DeepEqual(k.EntryRuns, j.EntryRuns) || !reflect.DeepEqual(k.Files, j.Files) {
		t.Errorf("reopened state %+v", k.State)
	}
	if k.Dir != p.Path || k.Join("x") != filepath.Join(p.Path, "x") {
		t.Errorf("Dir %q, Join %q", k.Dir, k.Join("x"))
	}
	for _, tmp := range []string{stateFile + ".tmp", markerFile + ".tmp"} {
		if exists(filepath.Join(p.Path, tmp)) {
			t.Errorf("temporary file %s left behind", tmp)
		}
	}
	b, err := os.ReadFile(filepath.Join(p.Path, stateFile))
	if err != nil || !bytes.HasPrefix(b, []byte("{\n  \"checksum\": \"crc32c:")) {
		t.Errorf("state.json is not framed with its checksum: %.60q %v", b, err)
	}
	if m, err := os.ReadFile(filepath.Join(p.Path, markerFile)); err != nil || !bytes.Contains(m, []byte("command copy\n")) {
		t.Errorf("marker %q %v", m, err)
	}

	writeFile(t, filepath.Join(p.Path, stateFile), []byte("{torn"))
	var de *DamagedError
	if _, err := Open(p, false); !errors.As(err, &de) || de.Foreign || errors.Is(err, ErrNoJob) {
		t.Errorf("a torn state must be reported damaged, got %v", err)
	}
	if err := k.Remove([2]unix.Timespec{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, false); !errors.Is(err, ErrNoJob) {
		t.Errorf("Open after Remove: %v", err)
	}
	if exists(p.Path) {
		t.Errorf("Remove left the state directory hlcp made")
	}
}

// TestCreateAfterCrash: a state directory left empty, or with nothing but
// what Create writes before the first state, by a crash inside Create is
// no job, and is reused; a directory with anything else in it is refused
// and left as it is.
func TestCreateAfterCrash(t *testing.T) {
	goodMarker := marker{Command: "copy", MadeDir: true}.encode()
	cases := []struct {
		name     string
		noDir    bool
		files    map[string][]byte
		ok       bool
		wantMade bool // the marker written says hlcp made the directory
	}{
		{name: "no directory", noDir: true, ok: true, wantMade: true},
		{name: "empty", ok: true},
		{name: "marker only", files: map[string][]byte{markerFile: goodMarker}, ok: true, wantMade: true},
		{name: "marker and temp state", files: map[string][]byte{markerFile: goodMarker, stateFile + ".tmp": []byte("{")}, ok: true, wantMade: true},
		{name: "marker and temp marker", files: map[string][]byte{markerFile: goodMarker, markerFile + ".tmp": nil}, ok: true, wantMade: true},
		{name: "temp marker only", files: map[string][]byte{markerFile + ".tmp": nil}, ok: true},
		{name: "someone's data", files: map[string][]byte{"precious": []byte("x")}},
		{name: "marker and someone's data", files: map[string][]byte{markerFile: goodMarker, "precious": []byte("x")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPlace(t, "state", false)
			if !c.noDir {
				if err := os.Mkdir(p.Path, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			for f, b := range c.files {
				writeFile(t, filepath.Join(p.Path, f), b)
			}
			_, err := Open(p, false)
			if c.ok && !errors.Is(err, ErrNoJob) {
				t.Errorf("Open before Create: %v, want ErrNoJob", err)
			}
			j, err := Create(p, Identity{Command: "copy"})
			if (err == nil) != c.ok {
				t.Fatalf("Create error %v, want ok=%v", err, c.ok)
			}
			if !c.ok {
				if !exists(filepath.Join(p.Path, "precious")) {
					t.Errorf("the directory's content was touched")
				}
				if exists(filepath.Join(p.Path, stateFile)) {
					t.Errorf("Create wrote a state into a directory it refused")
				}
				return
			}
			j.Close()
			k, err := Open(p, false)
			if err != nil || k.ID.Command != "copy" || k.Phase != PhaseScan {
				t.Fatalf("Open after Create: %v", err)
			}
			defer k.Close()
			if k.madeDir != c.wantMade {
				t.Errorf("madeDir %v, want %v", k.madeDir, c.wantMade)
			}
			if exists(filepath.Join(p.Path, markerFile+".tmp")) || exists(filepath.Join(p.Path, stateFile+".tmp")) {
				t.Errorf("temporary files left")
			}
		})
	}
}

// TestReserve: the space reserve is made once, at its size, kept across
// Reserve calls, given up by Release, and a Save still works without it.
func TestReserve(t *testing.T) {
	p := newPlace(t, "state", false)
	j := mustCreate(t, p, Identity{Command: "copy"})
	j.Reserve()
	path := j.Join(reserveName)
	fi, err := os.Lstat(path)
	if err != nil || fi.Size() != reserveSize || !fi.Mode().IsRegular() {
		t.Fatalf("reserve: %v %v", fi, err)
	}
	j.Reserve() // already there: untouched
	fi2, _ := os.Lstat(path)
	if !os.SameFile(fi, fi2) {
		t.Errorf("Reserve remade an existing reserve")
	}
	// A reserve of the wrong size (cut by a crash) is made again.
	if err := os.Truncate(path, 10); err != nil {
		t.Fatal(err)
	}
	j.Reserve()
	if fi3, err := os.Lstat(path); err != nil || fi3.Size() != reserveSize {
		t.Errorf("a cut reserve was not remade: %v %v", fi3, err)
	}
	j.Release()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Release left the reserve: %v", err)
	}
	j.Release() // nothing to release: no harm
	j.Watermark = 7
	if err := j.Save(); err != nil {
		t.Fatal(err)
	}
	k, err := Open(p, false)
	if err != nil || k.Watermark != 7 {
		t.Fatalf("reopen: %v %+v", err, k)
	}
	k.Close()
}
