// Package journal keeps the state of one job in a state directory: which
// phase it reached, the files the phases produced (runs, directory table,
// plan) and the copy's watermark. Every update is written to a temporary
// file, fsynced and renamed over the old one, so that after a crash the
// journal is either the old or the new version, never a torn one. The
// journal is O(1) in size: no per-file records.
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Phases, in order.
const (
	PhaseScan   = "scan"   // scanning the source; restarts from scratch
	PhaseSort   = "sort"   // scan done, runs listed; merging into the plan
	PhaseMkdir  = "mkdir"  // plan done; creating the directory skeleton
	PhaseCopy   = "copy"   // creating each group's inode from Watermark on, and its links from LinkMark on
	PhaseFinish = "finish" // directory metadata, deepest first, below FinishBelow
	PhaseRemove = "remove" // move: removing source paths below RemoveMark
	PhaseDone   = "done"
)

// Version of the state layout.
const Version = 1

// Identity is what must match for a rerun to resume a job: the same
// command, the same source and destination (by path and by inode), and the
// same options that change the result.
type Identity struct {
	Command string `json:"command"`
	Src     string `json:"src"`
	Dst     string `json:"dst"`
	SrcDev  uint64 `json:"src_dev"`
	SrcIno  uint64 `json:"src_ino"`
	DstDev  uint64 `json:"dst_dev"`
	DstIno  uint64 `json:"dst_ino"`
	// Options that change the result, as a canonical string.
	Options string `json:"options"`
}

// State is the journal's content.
type State struct {
	Version  int       `json:"version"`
	ID       Identity  `json:"identity"`
	Phase    string    `json:"phase"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"`
	Attempts int       `json:"attempts"` // runs of this job so far

	EntryRuns []string `json:"entry_runs,omitempty"` // relative to the state dir
	DirRuns   []string `json:"dir_runs,omitempty"`

	// Totals known after the scan and sort.
	Scan json.RawMessage `json:"scan,omitempty"`
	Plan json.RawMessage `json:"plan,omitempty"`
	Dirs uint32          `json:"dirs"`

	// Progress marks.
	DirsMade    uint32 `json:"dirs_made"`     // ids below are created
	Watermark   int64  `json:"watermark"`     // plan offset below which every group's inode is created
	GroupsBelow int64  `json:"groups_below"`  // groups below the watermark
	GroupsDone  int64  `json:"groups_done"`   // informative: done when the watermark was saved (workers run ahead of it)
	PathsDone   int64  `json:"paths_done"`    // informative
	BytesDone   int64  `json:"bytes_done"`    // informative
	LinkMark    int64  `json:"link_mark"`     // link file offset below which all links are made
	FinishBelow uint32 `json:"finish_below"`  // finish: ids >= this are done
	RemoveMark  int64  `json:"remove_mark"`   // move: plan offset below which sources are removed
	RemoveDirs  uint32 `json:"remove_dirs"`   // move: directory ids >= this are handled
	FilesGone   bool   `json:"files_removed"` // move: every source file is handled; directories next
	Errors      int64  `json:"errors"`
}

// Journal is a state directory with its state.
type Journal struct {
	Dir string
	State
}

const stateFile = "state.json"

// Create makes a new state directory at dir (which must not exist) and
// writes its first state.
func Create(dir string, id Identity) (*Journal, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		// A crash between this mkdir and the first save leaves the
		// directory empty, or with the temporary state file only: it is
		// ours and is reused. Anything else is not ours to overwrite.
		if !errors.Is(err, os.ErrExist) || !leftover(dir) {
			return nil, fmt.Errorf("create state directory: %w", err)
		}
	}
	now := time.Now().UTC()
	j := &Journal{Dir: dir, State: State{Version: Version, ID: id, Phase: PhaseScan, Started: now, Attempts: 1}}
	if err := j.Save(); err != nil {
		return nil, err
	}
	return j, nil
}

// leftover reports whether dir holds nothing but what a crash during Create
// can leave.
func leftover(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.Name() != stateFile+".tmp" {
			return false
		}
	}
	return true
}

// ErrNoJob means there is no state directory (or no state in it).
var ErrNoJob = errors.New("no job state")

// Open reads the state directory at dir.
func Open(dir string) (*Journal, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoJob
		}
		return nil, err
	}
	j := &Journal{Dir: dir}
	if err := json.Unmarshal(b, &j.State); err != nil {
		return nil, fmt.Errorf("state %s is damaged: %w", filepath.Join(dir, stateFile), err)
	}
	if j.Version != Version {
		return nil, fmt.Errorf("state %s has layout version %d; this hlcp reads %d", dir, j.Version, Version)
	}
	return j, nil
}

// Path joins a name to the state directory.
func (j *Journal) Path(name string) string { return filepath.Join(j.Dir, name) }

// reserveName is a file of reserveSize bytes kept allocated in the state
// directory: when the destination fills up (and the state is on it), it
// is removed to make room for the last checkpoint, the error log and a
// clean stop.
const (
	reserveName = "reserve"
	reserveSize = 1 << 20
)

// Reserve makes sure the space reserve exists (best effort: on a full
// filesystem it cannot be made, and the job goes on without it).
func (j *Journal) Reserve() {
	p := j.Path(reserveName)
	if fi, err := os.Stat(p); err == nil && fi.Size() == reserveSize {
		return
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, reserveSize); err != nil {
		// No fallocate (tmpfs has it; some FUSE filesystems do not):
		// write it.
		f.Truncate(0)
		if _, err := f.Write(make([]byte, reserveSize)); err != nil {
			f.Close()
			os.Remove(p)
			return
		}
	}
	f.Sync()
}

// Release frees the space reserve, for a stop on a full filesystem.
func (j *Journal) Release() { os.Remove(j.Path(reserveName)) }

// Save writes the state durably: temp file, fsync, rename, fsync of the
// directory. On a full filesystem the space reserve is given up for it.
func (j *Journal) Save() error {
	err := j.save()
	if err != nil && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)) {
		if _, serr := os.Stat(j.Path(reserveName)); serr == nil {
			j.Release()
			err = j.save()
		}
	}
	return err
}

func (j *Journal) save() error {
	j.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(&j.State, "", "  ")
	if err != nil {
		return err
	}
	tmp := j.Path(stateFile + ".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync state: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, j.Path(stateFile)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return SyncDir(j.Dir)
}

// SyncDir fsyncs a directory (so that renames in it are durable).
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Remove deletes the state directory.
func (j *Journal) Remove() error { return os.RemoveAll(j.Dir) }
