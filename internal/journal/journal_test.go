package journal

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCreateSaveOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	id := Identity{Command: "copy", Src: "/a", Dst: "/b", SrcDev: 1, SrcIno: 2, Options: "x"}
	j, err := Create(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Create(dir, id); err == nil {
		t.Fatal("Create over an existing state must fail")
	}
	j.Phase, j.Watermark, j.EntryRuns = PhaseCopy, 12345, []string{"scan/e/run-000000"}
	if err := j.Save(); err != nil {
		t.Fatal(err)
	}
	k, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != id || k.Phase != PhaseCopy || k.Watermark != 12345 || len(k.EntryRuns) != 1 {
		t.Errorf("reopened state %+v", k.State)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile+".tmp")); err == nil {
		t.Error("temporary state file left behind")
	}
	os.WriteFile(filepath.Join(dir, stateFile), []byte("{torn"), 0o600)
	if _, err := Open(dir); err == nil {
		t.Error("a damaged state must be reported")
	}
	if err := k.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrNoJob) {
		t.Errorf("Open after Remove: %v", err)
	}
}

// TestCreateAfterCrash: a state directory left empty (or with only the
// temporary state file) by a crash inside Create is reused; a directory
// with anything else in it is refused.
func TestCreateAfterCrash(t *testing.T) {
	base := t.TempDir()
	cases := []struct {
		name  string
		files []string
		ok    bool
	}{
		{"empty", nil, true},
		{"temp state only", []string{stateFile + ".tmp"}, true},
		{"someone's data", []string{"precious"}, false},
	}
	for _, c := range cases {
		dir := filepath.Join(base, c.name)
		os.Mkdir(dir, 0o700)
		for _, f := range c.files {
			os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600)
		}
		_, err := Create(dir, Identity{Command: "copy"})
		if (err == nil) != c.ok {
			t.Errorf("%s: Create error %v, want ok=%v", c.name, err, c.ok)
		}
		if c.ok {
			if j2, err := Open(dir); err != nil || j2.ID.Command != "copy" {
				t.Errorf("%s: Open after Create: %v", c.name, err)
			}
		} else if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
			t.Errorf("%s: the directory's content was touched", c.name)
		}
	}
}

// TestReserve: the space reserve is made once, at its size, kept across
// Reserve calls, given up by Release, and a Save still works without it.
func TestReserve(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	j, err := Create(dir, Identity{Command: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	j.Reserve()
	fi, err := os.Stat(j.Path(reserveName))
	if err != nil || fi.Size() != reserveSize {
		t.Fatalf("reserve: %v %v", fi, err)
	}
	j.Reserve() // already there: untouched
	fi2, _ := os.Stat(j.Path(reserveName))
	if !os.SameFile(fi, fi2) {
		t.Errorf("Reserve remade an existing reserve")
	}
	j.Release()
	if _, err := os.Stat(j.Path(reserveName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Release left the reserve: %v", err)
	}
	j.Watermark = 7
	if err := j.Save(); err != nil {
		t.Fatal(err)
	}
	if k, err := Open(dir); err != nil || k.Watermark != 7 {
		t.Errorf("reopen: %v %+v", err, k)
	}
}
