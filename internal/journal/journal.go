// Package journal keeps the state of one job in a state directory: which
// phase it reached, the files the phases produced (runs, directory table,
// plan) with what was written of each, and the copy's watermark. Every
// update is written to a temporary file, fsynced and renamed over the old
// one, so that after a crash the journal is either the old or the new
// version, never a torn one. The journal is O(1) in size: no per-file
// records.
//
// The state directory is hostile ground: it may sit in a DST that another
// user can write, or be named by --state. It is opened once, with
// O_NOFOLLOW, and accepted only when it is a directory owned by root or by
// the job's user that nobody else can write; every later access is
// relative to that fd. It carries a marker file, and nothing is deleted
// from a directory without it, nor any name that hlcp does not make. A
// state that cannot be read is an error (DamagedError), never "no job".
package journal

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"hlcp/internal/msg"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
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
	// PhaseMirror: a sync is repairing a DST that was not empty; its
	// state holds only working files, and a rerun starts it again.
	PhaseMirror = "mirror"
)

// Version of the state layout.
const Version = 2

// Names in the state directory. The job's stages write the others (see
// owned).
const (
	stateFile  = "state.json"
	markerFile = "hlcp-job"
	// MovedFile exists, durably, from just before a move removes its
	// first source path: DST then holds the only copy of what it
	// removed. It survives a damaged state.json.
	MovedFile = "moved"
	// ErrorLog is the spooled per-path errors.
	ErrorLog = "errors.log"
)

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

// Run is a sorted run file of the scan, in the subdirectory Dir of the
// state directory.
type Run struct {
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	Records int64  `json:"records"`
}

// State is the journal's content.
type State struct {
	Version  int       `json:"version"`
	ID       Identity  `json:"identity"`
	Phase    string    `json:"phase"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"`
	Attempts int       `json:"attempts"` // runs of this job so far

	// The scan's runs, in the state directory's scan/e and scan/d.
	EntryRuns []Run `json:"entry_runs,omitempty"`
	DirRuns   []Run `json:"dir_runs,omitempty"`
	// Files: what was written of each file the sort and the copy made
	// (plan, links, dirs, dirs.idx, copied): checked before they are
	// used.
	Files map[string]blockfile.Info `json:"files,omitempty"`

	// Totals known after the scan and sort.
	Scan json.RawMessage `json:"scan,omitempty"`
	Plan json.RawMessage `json:"plan,omitempty"`
	Dirs uint32          `json:"dirs"`

	// Progress marks.
	DirsMade     uint32 `json:"dirs_made"`     // ids below are created
	Watermark    int64  `json:"watermark"`     // plan offset below which every group's inode is created
	GroupsBelow  int64  `json:"groups_below"`  // groups below the watermark
	GroupsDone   int64  `json:"groups_done"`   // informative: done when the watermark was saved (workers run ahead of it)
	PathsDone    int64  `json:"paths_done"`    // informative
	BytesDone    int64  `json:"bytes_done"`    // informative
	LinkMark     int64  `json:"link_mark"`     // link file offset below which all links are made
	FinishBelow  uint32 `json:"finish_below"`  // finish: ids >= this are done
	RemoveMark   int64  `json:"remove_mark"`   // move: plan offset below which sources are removed
	RemoveGroups int64  `json:"remove_groups"` // move: groups below RemoveMark
	RemoveDirs   uint32 `json:"remove_dirs"`   // move: directory ids >= this are handled
	FilesGone    bool   `json:"files_removed"` // move: every source file is handled; directories next
	Errors       int64  `json:"errors"`
	// Damaged, when set, says which state file was found damaged by a
	// run: the job cannot go on from this state.
	Damaged string `json:"damaged,omitempty"`
	// Removing: the job is done and its state is being removed (its
	// files may be gone already); RootTimes are DST root's final atime
	// and mtime, to set again once it is gone.
	Removing  bool             `json:"removing,omitempty"`
	RootTimes [2]unix.Timespec `json:"root_times,omitempty"`
}

// Journal is an open state directory with its state.
type Journal struct {
	dir *fsx.Dir
	// Dir is the state directory's path, for messages.
	Dir string
	// madeDir: the directory was created by hlcp (not given empty by the
	// user), so it is removed with the state.
	madeDir bool
	place   Place
	State
}

// Place is where a state directory is: name in the directory parent
// (an fd the caller keeps open), and its path for messages.
type Place struct {
	Parent int
	Name   string
	Path   string
	// InDst: the default place, DST/.hlcp-state, which belongs to the
	// job whoever made it and goes with the state.
	InDst bool
}

// ErrNoJob means there is no job state there: no directory, or an empty
// one (or one that a crash inside Create left with nothing but hlcp's
// marker).
var ErrNoJob = errors.New("no job state")

// UnsafeError is a state directory that hlcp refuses to use: a symlink,
// not a directory, owned by someone else, or writable by others.
type UnsafeError struct {
	Path string
	Why  string
}

func (e *UnsafeError) Error() string {
	return fmt.Sprintf("refusing the state directory %s: %s", msg.Quote(e.Path), e.Why)
}

// DamagedError is a state that cannot be used: unreadable, of another
// layout, with a damaged file, or a directory that is not hlcp's.
type DamagedError struct {
	Path string
	Err  error
	// Foreign: the directory has no hlcp marker; hlcp neither uses nor
	// deletes it.
	Foreign bool
	// Command is the job's command as the marker says ("" if unknown).
	Command string
	// Moved: the move marker is there: the job has removed sources.
	Moved bool
}

func (e *DamagedError) Error() string {
	if e.Foreign {
		return fmt.Sprintf("%s is not an hlcp state directory (%v)", msg.Quote(e.Path), e.Err)
	}
	return fmt.Sprintf("the job state in %s is damaged: %v", msg.Quote(e.Path), e.Err)
}

func (e *DamagedError) Unwrap() error { return e.Err }

// MayHoldMovedData reports whether the damaged state may be that of a move
// that removed source paths: unless the marker says it is a copy and no
// move marker is there, it may.
func (e *DamagedError) MayHoldMovedData() bool {
	return e.Moved || e.Command != "copy"
}

// MovedData reports whether the state is that of a move that has removed,
// or may have begun to remove, source paths: DST then holds their only
// copy.
func (j *Journal) MovedData() bool {
	if j.ID.Command != "move" {
		return false
	}
	if j.Phase == PhaseRemove || j.Phase == PhaseDone {
		return true
	}
	_, err := j.dir.Lstat(MovedFile)
	return err == nil
}

// Open opens the state directory at p and reads its state. readOnly (for
// `hlcp status`) skips the owner check: nothing will be written.
func Open(p Place, readOnly bool) (*Journal, error) {
	d, err := openDir(p, readOnly)
	if err != nil {
		return nil, err
	}
	j, err := read(d, p)
	if err != nil {
		d.Close()
		return nil, err
	}
	return j, nil
}

// openDir opens and checks the state directory; ErrNoJob when there is
// none.
func openDir(p Place, readOnly bool) (*fsx.Dir, error) {
	d, err := fsx.DirAt(p.Parent, p.Name, p.Path)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, ErrNoJob
		case errors.Is(err, fsx.ErrSymlink):
			return nil, &UnsafeError{p.Path, "it is a symlink (hlcp never follows one)"}
		case errors.Is(err, unix.ENOTDIR):
			return nil, &UnsafeError{p.Path, "it is not a directory"}
		}
		return nil, err
	}
	if !readOnly {
		if why := unsafeDir(d); why != "" {
			d.Close()
			return nil, &UnsafeError{p.Path, why}
		}
	}
	return d, nil
}

// unsafeDir says why hlcp must not keep its state in d, or "".
func unsafeDir(d *fsx.Dir) string {
	st, err := d.Stat()
	if err != nil {
		return err.Error()
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return "it is not a directory"
	}
	if euid := uint32(os.Geteuid()); st.Uid != euid && st.Uid != 0 {
		return fmt.Sprintf("it is owned by uid %d, not by root or by this job's user (uid %d)", st.Uid, euid)
	}
	if st.Mode&0o022 != 0 {
		why := fmt.Sprintf("others can write to it (mode %04o)", st.Mode&07777)
		if fs, err := d.Statfs(); err == nil && noPermissions(int64(fs.Type)) {
			why += "; its filesystem (FAT, exFAT or FUSE) keeps no permissions of its own, so the state cannot be kept from other users there: give it a directory on another filesystem with --state DIR"
		}
		return why
	}
	if aclGrantsWrite(d.Fd()) {
		return "its ACL lets others write to it"
	}
	return ""
}

// noPermissions reports filesystems whose modes are mount options, not
// per file: FAT, exFAT, and FUSE (exfat-fuse, fusefat, ntfs-3g...).
func noPermissions(fsType int64) bool {
	const msdos, exfat, fuse = 0x4d44, 0x2011BAB0, 0x65735546
	return fsType == msdos || fsType == exfat || fsType == fuse
}

// aclGrantsWrite reports whether the access ACL of fd gives write
// permission to anyone but the owner.
func aclGrantsWrite(fd int) bool {
	buf := make([]byte, 1024)
	n, err := unix.Fgetxattr(fd, "system.posix_acl_access", buf)
	if err != nil {
		return errors.Is(err, unix.ERANGE) // too large to read: assume the worst
	}
	b := buf[:n]
	if len(b) < 4 {
		return false
	}
	for b = b[4:]; len(b) >= 8; b = b[8:] {
		tag, perm := binary.LittleEndian.Uint16(b), binary.LittleEndian.Uint16(b[2:])
		const userObj, mask, write = 0x01, 0x10, 0x02
		if tag != userObj && tag != mask && perm&write != 0 {
			return true
		}
	}
	return false
}

// marker is the content of the marker file.
type marker struct {
	Command string
	MadeDir bool
}

func (m marker) encode() []byte {
	return fmt.Appendf(nil, "hlcp job state\nlayout %d\ncommand %s\nmade-dir %v\n", Version, m.Command, m.MadeDir)
}

func readMarker(d *fsx.Dir) (marker, error) {
	b, err := d.ReadFile(markerFile, 4096)
	if err != nil {
		return marker{}, err
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 || lines[0] != "hlcp job state" {
		return marker{}, fmt.Errorf("%s is not an hlcp marker", markerFile)
	}
	var m marker
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		switch k {
		case "command":
			if v == "copy" || v == "move" || v == "sync" {
				m.Command = v
			}
		case "made-dir":
			m.MadeDir = v == "true"
		}
	}
	return m, nil
}

// read reads the state in the opened directory d.
func read(d *fsx.Dir, p Place) (*Journal, error) {
	path := p.Path
	names, err := d.Names()
	if err != nil {
		return nil, err
	}
	if len(names) == 0 || fresh(names) && !contains(names, stateFile) {
		// Empty, or what a crash inside Create leaves before the first
		// state: no job began.
		return nil, ErrNoJob
	}
	m, merr := readMarker(d)
	if merr != nil {
		if errors.Is(merr, os.ErrNotExist) {
			return nil, &DamagedError{Path: path, Foreign: true, Err: errors.New("it has no hlcp marker: hlcp neither uses nor deletes it")}
		}
		return nil, &DamagedError{Path: path, Foreign: true, Err: merr}
	}
	_, moved := d.Lstat(MovedFile)
	damaged := func(err error) error {
		return &DamagedError{Path: path, Err: err, Command: m.Command, Moved: moved == nil}
	}
	b, err := d.ReadFile(stateFile, 64<<20)
	if err != nil {
		return nil, damaged(err)
	}
	j := &Journal{dir: d, Dir: path, madeDir: m.MadeDir || p.InDst, place: p}
	if err := decode(b, &j.State); err != nil {
		return nil, damaged(err)
	}
	if j.Version != Version {
		return nil, damaged(fmt.Errorf("layout version %d; this hlcp reads %d", j.Version, Version))
	}
	if j.Damaged != "" {
		return nil, damaged(errors.New(j.Damaged))
	}
	if m.Command != "" && m.Command != j.ID.Command {
		return nil, damaged(fmt.Errorf("the marker says %s, the state %s", m.Command, j.ID.Command))
	}
	if j.Removing {
		return j, nil // its files may be gone: the job is done
	}
	for name, info := range j.Files {
		if err := j.checkFile(name, info); err != nil {
			return nil, damaged(err)
		}
	}
	if j.Phase == PhaseSort {
		if err := j.checkRuns(); err != nil {
			return nil, damaged(err)
		}
	}
	return j, nil
}

func contains(names []string, name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// fresh reports whether a state directory holds nothing but what Create
// writes before the first state (a crash in between).
func fresh(names []string) bool {
	for _, n := range names {
		if n != markerFile && n != markerFile+".tmp" && n != stateFile+".tmp" {
			return false
		}
	}
	return true
}

// checkFile checks that the state file name has the size it was written
// with.
func (j *Journal) checkFile(name string, info blockfile.Info) error {
	st, err := j.dir.Lstat(name)
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != info.Size {
		return fmt.Errorf("%s has %d bytes, not the %d written", name, st.Size, info.Size)
	}
	return nil
}

// checkRuns checks that the scan's runs, which the sort phase reads, have
// the sizes they were written with.
func (j *Journal) checkRuns() error {
	scan, err := j.dir.Sub("scan")
	if err != nil {
		return err
	}
	defer scan.Close()
	for sub, runs := range map[string][]Run{"e": j.EntryRuns, "d": j.DirRuns} {
		d, err := scan.Sub(sub)
		if err != nil {
			return err
		}
		for _, r := range runs {
			st, err := d.Lstat(r.Name)
			if err == nil && (st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != r.Size) {
				err = fmt.Errorf("%s has %d bytes, not the %d written", d.Join(r.Name), st.Size, r.Size)
			}
			if err != nil {
				d.Close()
				return err
			}
		}
		d.Close()
	}
	return nil
}

// encode frames the state with its checksum: a state.json that was
// edited, cut or bit-flipped is reported, not read.
func encode(s *State) ([]byte, error) {
	b, err := json.MarshalIndent(s, "  ", "  ")
	if err != nil {
		return nil, err
	}
	out := fmt.Appendf(nil, "{\n  \"checksum\": \"crc32c:%08x\",\n  \"state\": ", crc32.Checksum(b, crcTable))
	out = append(out, b...)
	return append(out, "\n}\n"...), nil
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func decode(b []byte, s *State) error {
	var f struct {
		Checksum string          `json:"checksum"`
		State    json.RawMessage `json:"state"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%s: %w", stateFile, err)
	}
	if want := fmt.Sprintf("crc32c:%08x", crc32.Checksum(f.State, crcTable)); f.Checksum != want {
		return fmt.Errorf("%s fails its checksum", stateFile)
	}
	if err := json.Unmarshal(f.State, s); err != nil {
		return fmt.Errorf("%s: %w", stateFile, err)
	}
	return nil
}

// Create makes a new state directory at p (it may exist only when Open
// said ErrNoJob of it) and writes its marker and its first state, in
// phase scan.
func Create(p Place, id Identity) (*Journal, error) {
	return CreateIn(p, id, PhaseScan)
}

// CreateIn is Create with the first state in phase: a job that starts
// elsewhere (a sync that repairs DST starts in PhaseMirror) never has a
// state that says otherwise, even for a moment.
func CreateIn(p Place, id Identity, phase string) (*Journal, error) {
	made := true
	if err := unix.Mkdirat(p.Parent, p.Name, 0o700); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create state directory %s: %w", msg.Quote(p.Path), err)
		}
		made = false
	}
	d, err := openDir(p, false)
	if err != nil {
		if made {
			unix.Unlinkat(p.Parent, p.Name, unix.AT_REMOVEDIR) // ours, and empty
		}
		return nil, err
	}
	if !made {
		names, err := d.Names()
		if err == nil && !fresh(names) {
			err = fmt.Errorf("state directory %s is not empty", msg.Quote(p.Path))
		}
		if err != nil {
			d.Close()
			return nil, err
		}
		// A directory made by an earlier run that crashed before its
		// first state keeps what its marker says.
		if m, err := readMarker(d); err == nil {
			made = m.MadeDir
		}
		made = made || p.InDst
	}
	j := &Journal{dir: d, Dir: p.Path, madeDir: made, place: p}
	if err := j.writeFile(markerFile, marker{Command: id.Command, MadeDir: made}.encode()); err != nil {
		d.Close()
		return nil, err
	}
	now := time.Now().UTC()
	j.State = State{Version: Version, ID: id, Phase: phase, Started: now, Attempts: 1}
	if err := j.Save(); err != nil {
		d.Close()
		return nil, err
	}
	return j, nil
}

// Close closes the state directory.
func (j *Journal) Close() error { return j.dir.Close() }

// StateDir is the open state directory, for the stages' files.
func (j *Journal) StateDir() *fsx.Dir { return j.dir }

// Join names a file of the state directory, for messages.
func (j *Journal) Join(name string) string { return j.dir.Join(name) }

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
	if st, err := j.dir.Lstat(reserveName); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == reserveSize {
		return
	}
	f, err := j.dir.CreateReplacing(reserveName)
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
			j.dir.Remove(reserveName)
			return
		}
	}
	f.Sync()
}

// Release frees the space reserve, for a stop on a full filesystem.
func (j *Journal) Release() { j.dir.Remove(reserveName) }

// Save writes the state durably: temp file, fsync, rename, fsync of the
// directory. On a full filesystem the space reserve is given up for it.
func (j *Journal) Save() error {
	j.Updated = time.Now().UTC()
	b, err := encode(&j.State)
	if err != nil {
		return err
	}
	err = j.writeFile(stateFile, b)
	if err != nil && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)) {
		if _, serr := j.dir.Lstat(reserveName); serr == nil {
			j.Release()
			err = j.writeFile(stateFile, b)
		}
	}
	return err
}

// writeFile replaces name durably with b: a new temporary file (O_EXCL,
// never through a symlink), fsync, rename, fsync of the directory.
func (j *Journal) writeFile(name string, b []byte) error {
	tmp := name + ".tmp"
	f, err := j.dir.CreateReplacing(tmp)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := j.dir.Rename(tmp, name); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return j.dir.Sync()
}

// MarkMoved records durably that the move is about to remove source
// paths (see MovedFile).
func (j *Journal) MarkMoved() error {
	if st, err := j.dir.Lstat(MovedFile); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		return nil
	}
	return j.writeFile(MovedFile, []byte("this move has removed source paths: DST holds their only copy\n"))
}

// SetDamaged records that the state file named in why was found damaged,
// so that no later run goes on from it.
func (j *Journal) SetDamaged(why string) error {
	j.Damaged = why
	return j.Save()
}

// SyncFile fsyncs the state file name.
func (j *Journal) SyncFile(name string) error {
	f, err := j.dir.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
