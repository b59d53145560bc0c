package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/journal"
	"hlcp/internal/progress"
)

// testPlace is the place of a state directory in a new temporary
// directory, as --state gives it (InDst false).
func testPlace(t *testing.T) journal.Place {
	t.Helper()
	base := t.TempDir()
	fd, err := unix.Open(base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return journal.Place{Parent: fd, Name: "state", Path: filepath.Join(base, "state")}
}

// testRunner is a runner with options o and nothing open.
func testRunner(o Options) *runner {
	o.Quiet = true
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	return &runner{o: o, start: time.Now(), srcFd: -1, dstFd: -1, stateParent: -1,
		rep: progress.New(io.Discard, progress.Quiet, 0)}
}

func isUsage(err error) bool {
	var ue *UsageError
	return errors.As(err, &ue)
}

// TestSameJob: a rerun resumes only its own job; when SRC or DST was
// recreated, or the job is another command's, it says which. Device
// numbers alone may differ (a reboot renumbers them): SRC's are mapped.
func TestSameJob(t *testing.T) {
	old := journal.Identity{Command: "copy", Src: "/s", Dst: "/d", SrcDev: 1, SrcIno: 10, DstDev: 2, DstIno: 20, Options: "one-file-system=false"}
	cases := []struct {
		name   string
		change func(id *journal.Identity)
		want   string // in the error; "" = accepted
		devMap map[uint64]uint64
	}{
		{name: "same", change: func(*journal.Identity) {}},
		{name: "SRC device renumbered", change: func(id *journal.Identity) { id.SrcDev = 7 }, devMap: map[uint64]uint64{1: 7}},
		{name: "DST device renumbered", change: func(id *journal.Identity) { id.DstDev = 8 }},
		{name: "both devices renumbered", change: func(id *journal.Identity) { id.SrcDev, id.DstDev = 7, 8 }, devMap: map[uint64]uint64{1: 7}},
		{name: "SRC recreated", change: func(id *journal.Identity) { id.SrcIno = 11 }, want: "SRC /s was recreated"},
		{name: "SRC recreated on another device", change: func(id *journal.Identity) { id.SrcIno, id.SrcDev = 11, 5 }, want: "SRC /s was recreated"},
		{name: "both recreated", change: func(id *journal.Identity) { id.SrcIno, id.DstIno = 11, 21 }, want: "SRC /s was recreated"},
		{name: "DST recreated", change: func(id *journal.Identity) { id.DstIno = 21 }, want: "DST /d was recreated"},
		{name: "other command", change: func(id *journal.Identity) { id.Command = "move" }, want: "unfinished job"},
		{name: "other command and SRC recreated", change: func(id *journal.Identity) { id.Command, id.SrcIno = "move", 11 }, want: "unfinished job"},
		{name: "other SRC", change: func(id *journal.Identity) { id.Src = "/t" }, want: "unfinished job"},
		{name: "other DST path", change: func(id *journal.Identity) { id.Dst = "/e" }, want: "unfinished job"},
		{name: "other options", change: func(id *journal.Identity) { id.Options = "one-file-system=true" }, want: "unfinished job"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := old
			c.change(&id)
			r := testRunner(Options{Src: "/s", Dst: "/d"})
			j := &journal.Journal{Dir: "/d/.hlcp-state", State: journal.State{ID: old}}
			err := r.sameJob(j, id)
			if c.want == "" {
				if err != nil {
					t.Fatalf("sameJob: %v", err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), c.want) || !isUsage(err) {
					t.Fatalf("sameJob: %v, want a usage error with %q", err, c.want)
				}
				if !strings.Contains(err.Error(), "`hlcp copy /s /d` (options one-file-system=false)") || !strings.Contains(err.Error(), "--restart") {
					t.Errorf("the message does not name the job or --restart: %v", err)
				}
				if strings.Contains(c.want, "recreated") == strings.Contains(err.Error(), "unfinished job") {
					t.Errorf("message %q", err)
				}
			}
			if fmt.Sprint(r.srcDevMap) != fmt.Sprint(c.devMap) {
				t.Errorf("srcDevMap %v, want %v", r.srcDevMap, c.devMap)
			}
		})
	}
}

// movedStates are valid job states, and whether each holds what a move
// removed.
var movedStates = []struct {
	name    string
	command string
	phase   string
	marker  bool // MarkMoved
	moved   bool // MovedData
}{
	{"copy", "copy", journal.PhaseCopy, false, false},
	{"copy in remove phase", "copy", journal.PhaseRemove, false, false},
	{"move before removing", "move", journal.PhaseCopy, false, false},
	{"move with its move marker", "move", journal.PhaseCopy, true, true},
	{"move in remove phase", "move", journal.PhaseRemove, false, true},
	{"move done", "move", journal.PhaseDone, false, true},
}

// TestExistingJob: a valid state of a move that removed sources is only
// resumed, by the same move of the same SRC; --restart, another command or
// another SRC are refused unless --discard-moved-data is given. Any other
// state is the caller's to resume or restart.
func TestExistingJob(t *testing.T) {
	const src = "/data/src"
	for _, s := range movedStates {
		p := testPlace(t)
		j, err := journal.Create(p, journal.Identity{Command: s.command, Src: src, Dst: "/data/dst"})
		if err != nil {
			t.Fatal(err)
		}
		j.Phase = s.phase
		if s.marker {
			if err := j.MarkMoved(); err != nil {
				t.Fatal(err)
			}
		}
		if j.MovedData() != s.moved {
			t.Fatalf("%s: MovedData %v", s.name, j.MovedData())
		}
		for _, restart := range []bool{false, true} {
			for _, discard := range []bool{false, true} {
				for _, move := range []bool{false, true} {
					for _, sameSrc := range []bool{false, true} {
						o := Options{Src: "/data/other", Dst: "/data/dst", Restart: restart, DiscardMoved: discard, Move: move}
						if sameSrc {
							o.Src = src
						}
						// Refused: moved data, no --discard-moved-data, and
						// not the same move going on.
						refused := s.moved && !discard && (restart || !move || !sameSrc)
						name := fmt.Sprintf("%s restart=%v discard-moved=%v move=%v same-src=%v", s.name, restart, discard, move, sameSrc)
						code, err := testRunner(o).existingJob(j)
						switch {
						case refused && (code != ExitUsage || !isUsage(err) || !strings.Contains(err.Error(), "--restart --discard-moved-data") || !strings.Contains(err.Error(), src)):
							t.Errorf("%s: %d %v, want refused", name, code, err)
						case !refused && (code != -1 || err != nil):
							t.Errorf("%s: %d %v, want allowed", name, code, err)
						}
					}
				}
			}
		}
		j.Close()
	}
	// A relative SRC is compared by its absolute path.
	dir := t.TempDir()
	p := testPlace(t)
	j, err := journal.Create(p, journal.Identity{Command: "move", Src: filepath.Join(dir, "src")})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	j.MarkMoved()
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(dir)
	if code, err := testRunner(Options{Src: "src", Move: true}).existingJob(j); code != -1 || err != nil {
		t.Errorf("relative SRC: %d %v", code, err)
	}
}

// damagedStates are states that Open reports damaged (or foreign), and
// whether each may hold what a move removed.
var damagedStates = []struct {
	name    string
	foreign bool
	command string // in the marker ("" = none in it)
	moved   bool   // the move marker is there
	mayHold bool
}{
	{name: "foreign directory", foreign: true},
	{name: "copy", command: "copy"},
	{name: "copy with the move marker", command: "copy", moved: true, mayHold: true},
	{name: "move", command: "move", mayHold: true},
	{name: "move that removed sources", command: "move", moved: true, mayHold: true},
	{name: "unknown command", command: "", mayHold: true},
}

// makeDamaged makes the state of s at p, damaged.
func makeDamaged(t *testing.T, p journal.Place, foreign bool, command string, moved bool) {
	t.Helper()
	if foreign {
		os.Mkdir(p.Path, 0o700)
		os.WriteFile(filepath.Join(p.Path, "precious"), []byte("mine"), 0o600)
		return
	}
	cmd := command
	if cmd == "" {
		cmd = "copy"
	}
	j, err := journal.Create(p, journal.Identity{Command: cmd, Src: "/s", Dst: "/d"})
	if err != nil {
		t.Fatal(err)
	}
	if moved {
		if err := j.MarkMoved(); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	if command == "" {
		os.WriteFile(filepath.Join(p.Path, "hlcp-job"), []byte("hlcp job state\nlayout 2\ncommand \nmade-dir true\n"), 0o600)
	}
	if err := os.Truncate(filepath.Join(p.Path, "state.json"), 100); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedState: a damaged state is refused unless --restart is given,
// and, when it may be that of a move that removed sources, also
// --discard-moved-data; a foreign directory is always refused. Only an
// allowed discard deletes anything.
func TestDamagedState(t *testing.T) {
	for _, s := range damagedStates {
		for _, restart := range []bool{false, true} {
			for _, discard := range []bool{false, true} {
				name := fmt.Sprintf("%s restart=%v discard-moved=%v", s.name, restart, discard)
				t.Run(name, func(t *testing.T) {
					p := testPlace(t)
					makeDamaged(t, p, s.foreign, s.command, s.moved)
					_, err := journal.Open(p, false)
					var de *journal.DamagedError
					if !errors.As(err, &de) || de.Foreign != s.foreign || de.MayHoldMovedData() != s.mayHold && !s.foreign {
						t.Fatalf("Open: %v (%+v)", err, de)
					}
					r := testRunner(Options{Restart: restart, DiscardMoved: discard})
					r.place = p
					code, err := r.damagedState(de)
					allowed := !s.foreign && restart && (!s.mayHold || discard)
					if allowed {
						if code != -1 || err != nil {
							t.Fatalf("damagedState: %d %v, want the state discarded", code, err)
						}
						if _, err := os.Lstat(p.Path); err == nil {
							t.Errorf("the discarded state's directory is still there")
						}
						return
					}
					if code != ExitUsage || !isUsage(err) {
						t.Fatalf("damagedState: %d %v, want a refusal", code, err)
					}
					want := "pass --restart"
					switch {
					case s.foreign:
						want = "not an hlcp state directory"
					case s.mayHold:
						want = "--restart --discard-moved-data"
					}
					if !strings.Contains(err.Error(), want) {
						t.Errorf("message %q, want %q in it", err, want)
					}
					if !errors.Is(err, de) && !strings.Contains(err.Error(), de.Error()) {
						t.Errorf("the message does not say what is wrong: %v", err)
					}
					keep := "state.json"
					if s.foreign {
						keep = "precious"
					}
					if _, err := os.Lstat(filepath.Join(p.Path, keep)); err != nil {
						t.Errorf("a refused state was touched: %v", err)
					}
				})
			}
		}
	}
	// A discard that meets a file hlcp did not make leaves it, and
	// refuses.
	t.Run("discard meets a foreign file", func(t *testing.T) {
		p := testPlace(t)
		makeDamaged(t, p, false, "copy", false)
		os.WriteFile(filepath.Join(p.Path, "precious"), []byte("mine"), 0o600)
		_, err := journal.Open(p, false)
		var de *journal.DamagedError
		if !errors.As(err, &de) {
			t.Fatal(err)
		}
		r := testRunner(Options{Restart: true, DiscardMoved: true})
		r.place = p
		code, err := r.damagedState(de)
		if code != ExitUsage || err == nil || !strings.Contains(err.Error(), "discard the damaged state") || !strings.Contains(err.Error(), "precious") {
			t.Errorf("damagedState: %d %v", code, err)
		}
		if b, _ := os.ReadFile(filepath.Join(p.Path, "precious")); string(b) != "mine" {
			t.Errorf("the foreign file was touched")
		}
	})
}

// TestUsagef: a %w verb keeps its cause for errors.Is and errors.As; %v
// does not.
func TestUsagef(t *testing.T) {
	ue := &journal.UnsafeError{Path: "/x", Why: "it is a symlink"}
	cases := []struct {
		name   string
		err    error
		msg    string
		target error // errors.Is(err, target) must hold; nil = Unwrap is nil
	}{
		{"%w of an errno", usagef("open DST %s: %w", "/d", unix.ENOENT), "open DST /d: no such file or directory", unix.ENOENT},
		{"%w of a wrapped errno", usagef("read: %w", &os.PathError{Op: "open", Path: "/p", Err: unix.ENOSPC}), "read: open /p: no space left on device", unix.ENOSPC},
		{"%w of a sentinel", usagef("state: %w", journal.ErrNoJob), "state: no job state", journal.ErrNoJob},
		{"%w of a usage error", usagef("outer: %w", usagef("inner: %w", io.EOF)), "outer: inner: EOF", io.EOF},
		{"%v", usagef("open DST %s: %v", "/d", unix.ENOENT), "open DST /d: no such file or directory", nil},
		{"no verb", usagef("plain"), "plain", nil},
	}
	for _, c := range cases {
		var u *UsageError
		if !errors.As(c.err, &u) || u.Error() != c.msg {
			t.Errorf("%s: %v (%T), want a UsageError %q", c.name, c.err, c.err, c.msg)
			continue
		}
		if c.target == nil {
			if u.Unwrap() != nil || errors.Is(c.err, unix.ENOENT) {
				t.Errorf("%s: a cause without %%w: %v", c.name, u.Unwrap())
			}
			continue
		}
		if !errors.Is(c.err, c.target) {
			t.Errorf("%s: errors.Is(%v) is false", c.name, c.target)
		}
	}
	var got *journal.UnsafeError
	if err := usagef("%w; move it away", ue); !errors.As(err, &got) || got != ue {
		t.Errorf("errors.As through usagef: %v", err)
	}
}

// TestOpenRel: openRel goes down one directory at a time and refuses a
// symlink anywhere, "..", an absolute path and a non-directory.
func TestOpenRel(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"a/b/c"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "a", "f"), nil, 0o644)
	os.Symlink("a", filepath.Join(root, "la"))
	os.Symlink("b", filepath.Join(root, "a", "lb"))
	os.Symlink(root, filepath.Join(root, "a", "abs"))
	os.Symlink("/", filepath.Join(root, "a", "b", "up"))
	rfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd)
	cases := []struct {
		rel  string
		want string // the directory it opens, relative to root; "-" = refused
	}{
		{"", "."},
		{".", "."},
		{"a", "a"},
		{"a/b", "a/b"},
		{"a/b/c", "a/b/c"},
		{"la", "-"},
		{"la/b", "-"},
		{"a/lb", "-"},
		{"a/lb/c", "-"},
		{"a/abs/a", "-"},
		{"a/b/up", "-"},
		{"a/f", "-"},
		{"a/missing", "-"},
		{"..", "-"},
		{"a/../a", "-"},
		{"/a", "-"},
		{"a//b", "-"},
	}
	for _, c := range cases {
		for _, flags := range []int{unix.O_RDONLY | unix.O_DIRECTORY, unix.O_PATH | unix.O_DIRECTORY} {
			fd, err := openRel(rfd, c.rel, flags)
			if c.want == "-" {
				if err == nil {
					unix.Close(fd)
					t.Errorf("openRel(%q, %#x) succeeded, want refused", c.rel, flags)
				}
				continue
			}
			if err != nil {
				t.Errorf("openRel(%q, %#x): %v", c.rel, flags, err)
				continue
			}
			var got, want unix.Stat_t
			unix.Fstat(fd, &got)
			unix.Stat(filepath.Join(root, c.want), &want)
			if got.Ino != want.Ino || got.Dev != want.Dev {
				t.Errorf("openRel(%q) opened inode %d, want %s (%d)", c.rel, got.Ino, c.want, want.Ino)
			}
			// O_PATH fds cannot be read; the others can be listed.
			if flags&unix.O_PATH == 0 {
				if _, err := unix.Getdents(fd, make([]byte, 4096)); err != nil {
					t.Errorf("openRel(%q) is not readable: %v", c.rel, err)
				}
			}
			unix.Close(fd)
		}
	}
}

// TestStopExitCodes: stop maps the error that stopped a job to its exit
// code and advice, and marks the state of a damaged file damaged.
func TestStopExitCodes(t *testing.T) {
	cases := []struct {
		name    string
		command string
		moved   bool
		err     error
		code    int
		advice  string
		damaged bool // the state is marked damaged after
	}{
		{name: "interrupted", command: "copy", err: fmt.Errorf("copy: %w", ErrInterrupted), code: ExitInterrupted, advice: "rerun the same command to resume"},
		{name: "damaged plan", command: "copy", err: fmt.Errorf("plan: block 3: %w", blockfile.ErrDamaged), code: ExitStopped, advice: "pass --restart to discard it", damaged: true},
		{name: "damaged plan of a move that removed sources", command: "move", moved: true, err: fmt.Errorf("plan: block 3: %w", blockfile.ErrDamaged), code: ExitStopped, advice: "--restart --discard-moved-data", damaged: true},
		{name: "ENOSPC", command: "copy", err: &os.PathError{Op: "write", Path: "/d/x", Err: unix.ENOSPC}, code: ExitStopped, advice: "the destination is full"},
		{name: "EDQUOT", command: "move", err: fmt.Errorf("copy x: %w", unix.EDQUOT), code: ExitStopped, advice: "the destination is full"},
		{name: "I/O error", command: "copy", err: fmt.Errorf("read x: %w", unix.EIO), code: ExitStopped, advice: "rerun the same command to resume"},
	}
	for _, c := range cases {
		for _, js := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s json=%v", c.name, js), func(t *testing.T) {
				p := testPlace(t)
				j, err := journal.Create(p, journal.Identity{Command: c.command, Src: "/s", Dst: "/d"})
				if err != nil {
					t.Fatal(err)
				}
				defer j.Close()
				j.Phase = journal.PhaseCopy
				if c.moved {
					j.MarkMoved()
				}
				var out bytes.Buffer
				r := testRunner(Options{Stdout: &out, Move: c.command == "move"})
				if js {
					r.o.Progress, r.o.Quiet = progress.JSON, false
				}
				r.sum.Command = c.command
				r.j = j
				code, err := r.stop(c.err)
				if code != c.code || r.sum.ExitCode != c.code {
					t.Errorf("stop: code %d (summary %d), want %d", code, r.sum.ExitCode, c.code)
				}
				if err == nil || !strings.Contains(err.Error(), c.advice) {
					t.Errorf("stop: %v, want %q in it", err, c.advice)
				}
				if js {
					var s struct {
						ExitCode int `json:"exit_code"`
					}
					if jerr := json.Unmarshal(out.Bytes(), &s); jerr != nil || s.ExitCode != c.code {
						t.Errorf("JSON summary %q: %v", out.String(), jerr)
					}
				} else if out.Len() != 0 {
					t.Errorf("quiet stop printed %q", out.String())
				}
				_, oerr := journal.Open(p, false)
				var de *journal.DamagedError
				if c.damaged {
					if !errors.As(oerr, &de) || !strings.Contains(oerr.Error(), "block 3") || de.MayHoldMovedData() != c.moved {
						t.Errorf("Open after stop: %v, want the state damaged", oerr)
					}
				} else if oerr != nil {
					t.Errorf("Open after stop: %v", oerr)
				}
			})
		}
	}
}
