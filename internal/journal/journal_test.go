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
