package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/blockfile"
	"hlcp/internal/fsx"
)

// otherUID is a uid that is neither root nor the test's.
const otherUID = 4242

// aclXattr encodes a POSIX access ACL (the kernel's xattr format):
// entries are {tag, perm, id}, sorted by tag then id.
func aclXattr(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

const (
	aclUserObj  = 0x01
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
	aclUndef    = 0xffffffff
)

// setACL gives otherUID's group rwx in the access ACL of path, with the
// mask mask (rwx: the mode shows group write; r-x: the entry is masked,
// and only the ACL says that someone was given write).
func setACL(t *testing.T, path string, mask uint32) {
	t.Helper()
	b := aclXattr(
		[3]uint32{aclUserObj, 7, aclUndef},
		[3]uint32{aclGroupObj, 5, aclUndef},
		[3]uint32{aclGroup, 7, otherUID},
		[3]uint32{aclMask, mask, aclUndef},
		[3]uint32{aclOther, 0, aclUndef},
	)
	if err := unix.Setxattr(path, "system.posix_acl_access", b, 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			t.Skipf("no ACLs on this filesystem: %v", err)
		}
		t.Fatal(err)
	}
}

// setfacl gives otherUID's group write with setfacl, then takes the write
// out of the mode (the mask) with chmod: only the ACL still names it.
func setfacl(t *testing.T, path string, chmod bool) {
	t.Helper()
	bin, err := exec.LookPath("setfacl")
	if err != nil {
		t.Skip("setfacl is not installed")
	}
	if out, err := exec.Command(bin, "-m", "g:4242:rwx", path).CombinedOutput(); err != nil {
		t.Skipf("setfacl: %v %s", err, out)
	}
	if chmod {
		if err := os.Chmod(path, 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOpenUnsafe: every state directory hlcp must refuse is refused by
// Open, Create and Discard, whatever it holds, and nothing in it (or
// behind a symlink) is touched. readOnly skips only the owner and mode
// checks.
func TestOpenUnsafe(t *testing.T) {
	cases := []struct {
		name string
		// setup makes the unsafe directory at p (a valid job is at
		// p.Path, or at real when p is a symlink to it).
		setup      func(t *testing.T, p Place)
		why        string // in UnsafeError.Why
		readOnlyOK bool   // Open(readOnly) accepts it
	}{
		{name: "symlink to a job's directory", why: "symlink", setup: func(t *testing.T, p Place) {
			real := Place{Parent: p.Parent, Name: "real", Path: filepath.Join(p.base(), "real")}
			mustCreate(t, real, testID)
			os.Symlink("real", p.Path)
		}},
		{name: "symlink to a file", why: "", setup: func(t *testing.T, p Place) {
			writeFile(t, filepath.Join(p.base(), "file"), []byte("x"))
			os.Symlink("file", p.Path)
		}},
		{name: "dangling symlink", why: "symlink", setup: func(t *testing.T, p Place) {
			os.Symlink("nowhere", p.Path)
		}},
		{name: "a regular file", why: "not a directory", setup: func(t *testing.T, p Place) {
			writeFile(t, p.Path, []byte("x"))
		}},
		{name: "mode 0777", why: "others can write", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			os.Chmod(p.Path, 0o777)
		}},
		{name: "mode 0770", why: "others can write", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			os.Chmod(p.Path, 0o770)
		}},
		{name: "mode 0702", why: "others can write", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			os.Chmod(p.Path, 0o702)
		}},
		{name: "mode 1777 (sticky)", why: "others can write", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			os.Chmod(p.Path, 0o1777)
		}},
		{name: "owned by another uid", why: "owned by uid 4242", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			if err := os.Lchown(p.Path, otherUID, otherUID); err != nil {
				t.Skipf("chown: %v", err)
			}
		}},
		{name: "setfacl group write", why: "others can write", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			setfacl(t, p.Path, false)
		}},
		{name: "setfacl group write, masked by chmod 0700", why: "ACL", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			setfacl(t, p.Path, true)
		}},
		{name: "ACL xattr group write", why: "others can write", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			setACL(t, p.Path, 7)
		}},
		{name: "ACL xattr group write, masked", why: "ACL", readOnlyOK: true, setup: func(t *testing.T, p Place) {
			mustCreate(t, p, testID)
			setACL(t, p.Path, 5)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPlace(t, "state", false)
			c.setup(t, p)
			before := snapshot(t, p.base())

			_, err := Open(p, false)
			var ue *UnsafeError
			if !errors.As(err, &ue) {
				t.Fatalf("Open: %v, want an UnsafeError", err)
			}
			why := ue.Why
			if ue.Path != p.Path || !strings.Contains(why, c.why) || !strings.Contains(err.Error(), "refusing the state directory") {
				t.Errorf("Open: %v (why %q, want %q)", err, ue.Why, c.why)
			}
			if j, err := Create(p, testID); !errors.As(err, &ue) {
				if j != nil {
					j.Close()
				}
				t.Errorf("Create: %v, want an UnsafeError", err)
			}
			if err := Discard(p); !errors.As(err, &ue) {
				t.Errorf("Discard: %v, want an UnsafeError", err)
			}
			j, err := Open(p, true)
			if c.readOnlyOK {
				if err != nil {
					t.Errorf("Open(readOnly): %v", err)
				} else {
					j.Close()
				}
			} else if !errors.As(err, &ue) {
				t.Errorf("Open(readOnly): %v, want an UnsafeError", err)
			}
			if after := snapshot(t, p.base()); after != before {
				t.Errorf("the refused directory was changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// snapshot lists the tree at root: names, types, sizes, modes and
// contents.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			lines = append(lines, path+" "+err.Error())
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		l := rel + " " + fi.Mode().String()
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			tgt, _ := os.Readlink(path)
			l += " -> " + tgt
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(path)
			l += " " + strconv.Quote(string(b))
		}
		lines = append(lines, l)
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestOpenNoJob: no directory, an empty one, or one that a crash inside
// Create left with nothing but its first files, is no job.
func TestOpenNoJob(t *testing.T) {
	m := marker{Command: "move", MadeDir: true}.encode()
	cases := []struct {
		name  string
		noDir bool
		files map[string][]byte
	}{
		{name: "no directory", noDir: true},
		{name: "empty directory"},
		{name: "marker only", files: map[string][]byte{markerFile: m}},
		{name: "marker and temporary state", files: map[string][]byte{markerFile: m, stateFile + ".tmp": []byte(`{"chec`)}},
		{name: "marker and temporary marker", files: map[string][]byte{markerFile: m, markerFile + ".tmp": m[:5]}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPlace(t, "state", false)
			if !c.noDir {
				os.Mkdir(p.Path, 0o700)
			}
			for f, b := range c.files {
				writeFile(t, filepath.Join(p.Path, f), b)
			}
			for _, ro := range []bool{false, true} {
				if j, err := Open(p, ro); !errors.Is(err, ErrNoJob) {
					if j != nil {
						j.Close()
					}
					t.Errorf("Open(readOnly=%v): %v, want ErrNoJob", ro, err)
				}
			}
		})
	}
}

// TestOpenForeign: a directory without hlcp's marker that holds anything
// is not hlcp's: reported, neither used nor deleted.
func TestOpenForeign(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, p Place)
	}{
		{"a foreign file", func(t *testing.T, p Place) {
			writeFile(t, filepath.Join(p.Path, "precious"), []byte("x"))
		}},
		{"a state without its marker", func(t *testing.T, p Place) {
			j := mustCreate(t, p, testID)
			os.Remove(j.Join(markerFile))
			writeFile(t, filepath.Join(p.Path, "precious"), []byte("x"))
		}},
		{"a marker of someone else's", func(t *testing.T, p Place) {
			j := mustCreate(t, p, testID)
			writeFile(t, j.Join(markerFile), []byte("something else\na\nb\nc\n"))
		}},
		{"a marker that is a symlink to a marker", func(t *testing.T, p Place) {
			j := mustCreate(t, p, testID)
			os.Rename(j.Join(markerFile), filepath.Join(p.base(), "m"))
			os.Symlink("../m", j.Join(markerFile))
		}},
		{"a marker that is a directory", func(t *testing.T, p Place) {
			j := mustCreate(t, p, testID)
			os.Remove(j.Join(markerFile))
			os.Mkdir(j.Join(markerFile), 0o700)
		}},
		{"a subdirectory", func(t *testing.T, p Place) {
			os.Mkdir(filepath.Join(p.Path, "scan"), 0o700)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPlace(t, "state", false)
			os.Mkdir(p.Path, 0o700)
			c.setup(t, p)
			before := snapshot(t, p.base())
			_, err := Open(p, false)
			var de *DamagedError
			if !errors.As(err, &de) || !de.Foreign || de.Path != p.Path {
				t.Fatalf("Open: %v, want a foreign DamagedError", err)
			}
			if !strings.Contains(err.Error(), "not an hlcp state directory") {
				t.Errorf("message %q", err)
			}
			if err := Discard(p); err == nil || !strings.Contains(err.Error(), "deletes nothing") {
				t.Errorf("Discard: %v, want a refusal", err)
			}
			if j, err := Create(p, testID); err == nil {
				j.Close()
				t.Errorf("Create over a foreign directory succeeded")
			}
			if after := snapshot(t, p.base()); after != before {
				t.Errorf("the foreign directory was changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestOpenDamaged: a state with hlcp's marker that cannot be used is
// reported damaged, with the marker's command and the move marker, and
// Discard removes it.
func TestOpenDamaged(t *testing.T) {
	cases := []struct {
		name    string
		command string
		moved   bool
		damage  func(t *testing.T, j *Journal)
		// wantCommand is the command the error reports ("" = command).
		wantCommand string
		want        string // in the message
	}{
		{name: "state cut to 100 bytes", command: "copy", want: "state.json", damage: func(t *testing.T, j *Journal) {
			if err := os.Truncate(j.Join(stateFile), 100); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a byte flipped", command: "copy", damage: func(t *testing.T, j *Journal) {
			b, _ := os.ReadFile(j.Join(stateFile))
			b[len(b)/2] ^= 0x01
			writeFile(t, j.Join(stateFile), b)
		}},
		{name: "a digit changed (valid JSON)", command: "move", want: "checksum", damage: func(t *testing.T, j *Journal) {
			b, _ := os.ReadFile(j.Join(stateFile))
			nb := bytes.Replace(b, []byte(`"watermark": 0`), []byte(`"watermark": 9`), 1)
			if bytes.Equal(b, nb) {
				t.Fatal("no watermark in the state")
			}
			writeFile(t, j.Join(stateFile), nb)
		}},
		{name: "empty state", command: "copy", damage: func(t *testing.T, j *Journal) {
			writeFile(t, j.Join(stateFile), nil)
		}},
		{name: "state deleted beside the plan", command: "copy", damage: func(t *testing.T, j *Journal) {
			writeFile(t, j.Join("plan"), []byte("p"))
			os.Remove(j.Join(stateFile))
		}},
		{name: "state deleted beside the error log", command: "move", damage: func(t *testing.T, j *Journal) {
			writeFile(t, j.Join(ErrorLog), []byte("e"))
			os.Remove(j.Join(stateFile))
		}},
		{name: "state deleted after the move began", command: "move", moved: true, damage: func(t *testing.T, j *Journal) {
			os.Remove(j.Join(stateFile))
		}},
		{name: "state is a symlink to a valid state", command: "copy", damage: func(t *testing.T, j *Journal) {
			os.Rename(j.Join(stateFile), filepath.Join(filepath.Dir(j.Dir), "s"))
			os.Symlink("../s", j.Join(stateFile))
		}},
		{name: "state is a fifo", command: "copy", want: "not a regular file", damage: func(t *testing.T, j *Journal) {
			os.Remove(j.Join(stateFile))
			if err := unix.Mkfifo(j.Join(stateFile), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "other layout version", command: "copy", want: "layout version 1", damage: func(t *testing.T, j *Journal) {
			j.Version = 1
			if err := j.Save(); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "marked damaged", command: "move", want: "plan: block 3 is damaged", damage: func(t *testing.T, j *Journal) {
			if err := j.SetDamaged("plan: block 3 is damaged"); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a recorded file cut", command: "copy", want: "plan has 50 bytes, not the 100 written", damage: func(t *testing.T, j *Journal) {
			writeFile(t, j.Join("plan"), make([]byte, 100))
			j.Files = map[string]blockfile.Info{"plan": {Size: 100, Records: 2}}
			if err := j.Save(); err != nil {
				t.Fatal(err)
			}
			os.Truncate(j.Join("plan"), 50)
		}},
		{name: "a recorded file missing", command: "move", moved: true, damage: func(t *testing.T, j *Journal) {
			j.Files = map[string]blockfile.Info{"links": {Size: 10}}
			if err := j.Save(); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a recorded file replaced by a symlink", command: "copy", damage: func(t *testing.T, j *Journal) {
			writeFile(t, filepath.Join(filepath.Dir(j.Dir), "outside"), make([]byte, 10))
			os.Symlink("../outside", j.Join("dirs"))
			j.Files = map[string]blockfile.Info{"dirs": {Size: 10}}
			if err := j.Save(); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "marker and state disagree", command: "copy", wantCommand: "move", want: "the marker says move", damage: func(t *testing.T, j *Journal) {
			writeFile(t, j.Join(markerFile), marker{Command: "move", MadeDir: true}.encode())
		}},
		{name: "marker without a command", command: "copy", wantCommand: "-", damage: func(t *testing.T, j *Journal) {
			writeFile(t, j.Join(markerFile), []byte("hlcp job state\nlayout 2\ncommand \nmade-dir true\n"))
			os.Truncate(j.Join(stateFile), 10)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPlace(t, "state", false)
			j := mustCreate(t, p, Identity{Command: c.command, Src: "/s", Dst: "/d"})
			if c.moved {
				if err := j.MarkMoved(); err != nil {
					t.Fatal(err)
				}
			}
			c.damage(t, j)
			k, err := Open(p, false)
			var de *DamagedError
			if !errors.As(err, &de) {
				if k != nil {
					k.Close()
				}
				t.Fatalf("Open: %v, want a DamagedError", err)
			}
			want := c.command
			switch c.wantCommand {
			case "":
			case "-":
				want = ""
			default:
				want = c.wantCommand
			}
			if de.Foreign || de.Command != want || de.Moved != c.moved || de.Path != p.Path {
				t.Errorf("DamagedError %+v, want command %q moved %v", de, want, c.moved)
			}
			if !strings.Contains(err.Error(), "is damaged") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("message %q, want %q in it", err, c.want)
			}
			if de.Unwrap() == nil {
				t.Errorf("no cause")
			}
			// readOnly reports it the same.
			if _, err := Open(p, true); !errors.As(err, &de) {
				t.Errorf("Open(readOnly): %v", err)
			}
			outside := snapshotOutside(t, p)
			if err := Discard(p); err != nil {
				t.Fatalf("Discard: %v", err)
			}
			if exists(p.Path) {
				t.Errorf("Discard left the directory hlcp made")
			}
			if after := snapshotOutside(t, p); after != outside {
				t.Errorf("Discard changed what is outside:\nbefore %s\nafter  %s", outside, after)
			}
			if _, err := Open(p, false); !errors.Is(err, ErrNoJob) {
				t.Errorf("Open after Discard: %v", err)
			}
		})
	}
}

// snapshotOutside is the snapshot of the state directory's parent
// without the state directory.
func snapshotOutside(t *testing.T, p Place) string {
	var keep []string
	for _, l := range strings.Split(snapshot(t, p.base()), "\n") {
		if l != "" && !strings.HasPrefix(l, p.Name+" ") && !strings.HasPrefix(l, p.Name+"/") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// TestMayHoldMovedData: only a state whose marker says copy, without the
// move marker, cannot hold what a move removed.
func TestMayHoldMovedData(t *testing.T) {
	for _, c := range []struct {
		command string
		moved   bool
		want    bool
	}{
		{"copy", false, false},
		{"copy", true, true},
		{"move", false, true},
		{"move", true, true},
		{"", false, true},
		{"", true, true},
	} {
		de := &DamagedError{Command: c.command, Moved: c.moved}
		if got := de.MayHoldMovedData(); got != c.want {
			t.Errorf("command %q moved %v: MayHoldMovedData %v, want %v", c.command, c.moved, got, c.want)
		}
	}
}

// TestMovedData: a valid state holds moved data when it is a move in the
// remove phase (or done), or a move with the move marker.
func TestMovedData(t *testing.T) {
	for _, command := range []string{"copy", "move"} {
		for _, phase := range []string{PhaseScan, PhaseCopy, PhaseFinish, PhaseRemove, PhaseDone} {
			for _, moved := range []bool{false, true} {
				p := newPlace(t, "state", true)
				j := mustCreate(t, p, Identity{Command: command})
				j.Phase = phase
				if moved {
					j.MarkMoved()
					j.MarkMoved() // twice: no harm
				}
				want := command == "move" && (moved || phase == PhaseRemove || phase == PhaseDone)
				if got := j.MovedData(); got != want {
					t.Errorf("%s in phase %s, moved file %v: MovedData %v, want %v", command, phase, moved, got, want)
				}
				if moved {
					if b, err := os.ReadFile(j.Join(MovedFile)); err != nil || len(b) == 0 {
						t.Errorf("moved file %q %v", b, err)
					}
				}
			}
		}
	}
}

// TestNoFollow: what a job writes in its state directory never goes
// through a symlink (or a hard link) planted under its name: the planted
// name is replaced, its target stays as it was.
func TestNoFollow(t *testing.T) {
	cases := []struct {
		name  string // planted in the state directory
		hard  bool   // a hard link, not a symlink
		write func(t *testing.T, p Place) *Journal
		// stays: the planted name is replaced by a regular file (else it
		// is gone).
		stays bool
	}{
		{name: stateFile + ".tmp"},
		{name: stateFile + ".tmp", hard: true},
		{name: stateFile, stays: true},
		{name: stateFile, hard: true, stays: true},
		{name: MovedFile + ".tmp", write: func(t *testing.T, p Place) *Journal {
			j, err := Open(p, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := j.MarkMoved(); err != nil {
				t.Fatal(err)
			}
			return j
		}},
		{name: reserveName, stays: true, write: func(t *testing.T, p Place) *Journal {
			j, err := Open(p, false)
			if err != nil {
				t.Fatal(err)
			}
			j.Reserve()
			return j
		}},
	}
	for _, c := range cases {
		for _, dangling := range []bool{false, true} {
			if dangling && c.hard {
				continue
			}
			t.Run(c.name+map[bool]string{false: " symlink", true: " dangling symlink"}[dangling]+map[bool]string{true: " (hard link)"}[c.hard], func(t *testing.T) {
				p := newPlace(t, "state", false)
				j := mustCreate(t, p, testID)
				j.Close()
				target := filepath.Join(p.base(), "target")
				if !dangling {
					writeFile(t, target, []byte("keep"))
					os.Chmod(target, 0o644)
				}
				planted := filepath.Join(p.Path, c.name)
				os.Remove(planted)
				var err error
				if c.hard {
					err = os.Link(target, planted)
				} else {
					err = os.Symlink("../target", planted)
				}
				if err != nil {
					t.Fatal(err)
				}
				if c.write == nil {
					k, err := Open(p, false)
					if c.name == stateFile {
						// A planted state.json is not read through.
						if err == nil {
							k.Close()
							t.Fatalf("Open read a state through a planted %s", c.name)
						}
						k = &Journal{dir: mustDir(t, p), Dir: p.Path, place: p, State: j.State}
					} else if err != nil {
						t.Fatal(err)
					}
					k.Watermark = 99
					if err := k.Save(); err != nil {
						t.Fatal(err)
					}
					j = k
				} else {
					j = c.write(t, p)
				}
				j.Close()
				if dangling {
					if exists(target) {
						t.Errorf("a write went through the dangling symlink %s and created its target", c.name)
					}
				} else if b, err := os.ReadFile(target); err != nil || string(b) != "keep" {
					t.Errorf("the target of the planted %s was changed: %q %v", c.name, b, err)
				}
				fi, err := os.Lstat(planted)
				switch {
				case c.stays && (err != nil || !fi.Mode().IsRegular()):
					t.Errorf("%s is not a regular file: %v %v", c.name, fi, err)
				case !c.stays && err == nil:
					t.Errorf("%s is still there", c.name)
				}
				if c.stays && !dangling && !c.hard {
					if fi2, _ := os.Lstat(target); os.SameFile(fi, fi2) {
						t.Errorf("%s is the target", c.name)
					}
				}
				if c.write == nil {
					k, err := Open(p, false)
					if err != nil || k.Watermark != 99 {
						t.Fatalf("Open after the Save: %v", err)
					}
					k.Close()
				}
			})
		}
	}
	// A temporary marker planted before Create (in a directory a crash
	// left) is replaced, never written through.
	t.Run("marker tmp before Create", func(t *testing.T) {
		p := newPlace(t, "state", false)
		os.Mkdir(p.Path, 0o700)
		target := filepath.Join(p.base(), "target")
		writeFile(t, target, []byte("keep"))
		os.Symlink("../target", filepath.Join(p.Path, markerFile+".tmp"))
		mustCreate(t, p, testID)
		if b, _ := os.ReadFile(target); string(b) != "keep" {
			t.Errorf("target changed: %q", b)
		}
		if fi, err := os.Lstat(filepath.Join(p.Path, markerFile)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("marker: %v %v", fi, err)
		}
	})
}

func mustDir(t *testing.T, p Place) *fsx.Dir {
	t.Helper()
	d, err := openDir(p, false)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestModes: with umask 0, the state directory is 0700 and every file in
// it 0600.
func TestModes(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	for _, pre := range []bool{false, true} {
		p := newPlace(t, "state", false)
		if pre {
			os.Mkdir(p.Path, 0o700)
		}
		j := mustCreate(t, p, testID)
		j.Reserve()
		if err := j.MarkMoved(); err != nil {
			t.Fatal(err)
		}
		j.Watermark = 3
		if err := j.Save(); err != nil {
			t.Fatal(err)
		}
		sub, err := j.StateDir().Mkdir("scan")
		if err != nil {
			t.Fatal(err)
		}
		f, err := sub.Create("run-000001")
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		sub.Close()
		filepath.Walk(p.Path, func(path string, fi os.FileInfo, err error) error {
			if err != nil {
				t.Error(err)
				return nil
			}
			want := os.FileMode(0o600)
			if fi.IsDir() {
				want = os.ModeDir | 0o700
			}
			if fi.Mode() != want {
				t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
			}
			return nil
		})
	}
}

// TestRemoveOwnNamesOnly: Remove and Discard delete only the names hlcp
// makes, report the others (and then keep the marker and the directory),
// and never follow a symlink, in the directory or below it.
func TestRemoveOwnNamesOnly(t *testing.T) {
	mk := func(t *testing.T, path string) { os.MkdirAll(path, 0o700) }
	cases := []struct {
		name  string
		plant func(t *testing.T, state, outside string)
		// errs: the call fails, naming this; "" = it succeeds.
		errs string
		// survive: paths (relative to the parent) that must still be
		// there; gone: paths that must not.
		survive, gone []string
	}{
		{
			name: "hlcp's files only",
			plant: func(t *testing.T, s, o string) {
				for _, n := range []string{"plan", "links", "dirs", "dirs.idx", "copied", "plan.tmp", ErrorLog, ".hlcp-probe-123", MovedFile} {
					writeFile(t, filepath.Join(s, n), []byte("x"))
				}
				mk(t, filepath.Join(s, "scan", "e"))
				mk(t, filepath.Join(s, "scan", "d"))
				writeFile(t, filepath.Join(s, "scan", "e", "run-000001"), []byte("x"))
				writeFile(t, filepath.Join(s, "scan", "d", "merge-000002"), []byte("x"))
				mk(t, filepath.Join(s, "sorttmp", "linkruns"))
				writeFile(t, filepath.Join(s, "sorttmp", "linkruns", "run-000003"), []byte("x"))
				writeFile(t, filepath.Join(s, "sorttmp", "merge-000004"), []byte("x"))
			},
			gone: []string{"state"},
		},
		{
			// The state stays beside the marker: it says what is going
			// on (a removal that cannot finish) to the next run.
			name:    "a foreign file",
			plant:   func(t *testing.T, s, o string) { writeFile(t, filepath.Join(s, "precious"), []byte("mine")) },
			errs:    "precious",
			survive: []string{"state/precious", "state/" + markerFile, "state/" + stateFile},
		},
		{
			name:    "a foreign file that looks like a run",
			plant:   func(t *testing.T, s, o string) { writeFile(t, filepath.Join(s, "run-000001"), []byte("mine")) },
			errs:    "run-000001",
			survive: []string{"state/run-000001"},
		},
		{
			name: "a directory under an hlcp file's name",
			plant: func(t *testing.T, s, o string) {
				mk(t, filepath.Join(s, "plan"))
				writeFile(t, filepath.Join(s, "plan", "x"), nil)
			},
			errs:    "plan",
			survive: []string{"state/plan/x"},
		},
		{
			name: "a symlink under an hlcp file's name",
			plant: func(t *testing.T, s, o string) {
				os.Symlink(filepath.Join(o, "file"), filepath.Join(s, "plan"))
				os.Symlink(o, filepath.Join(s, "errors.log"))
			},
			survive: []string{"outside/file", "outside/scan/e/run-000001"},
			gone:    []string{"state"},
		},
		{
			name:    "a symlink under a foreign name",
			plant:   func(t *testing.T, s, o string) { os.Symlink(o, filepath.Join(s, "link")) },
			errs:    "link",
			survive: []string{"state/link", "outside/file", "outside/scan/e/run-000001"},
		},
		{
			name:    "scan is a symlink",
			plant:   func(t *testing.T, s, o string) { os.Symlink(filepath.Join(o, "scan"), filepath.Join(s, "scan")) },
			errs:    "symlink",
			survive: []string{"state/scan", "outside/scan/e/run-000001"},
		},
		{
			name: "scan/e is a symlink",
			plant: func(t *testing.T, s, o string) {
				mk(t, filepath.Join(s, "scan"))
				os.Symlink(filepath.Join(o, "scan", "e"), filepath.Join(s, "scan", "e"))
			},
			errs:    "symlink",
			survive: []string{"state/scan/e", "outside/scan/e/run-000001"},
		},
		{
			name: "a run in scan/e is a symlink",
			plant: func(t *testing.T, s, o string) {
				mk(t, filepath.Join(s, "scan", "e"))
				os.Symlink(filepath.Join(o, "scan", "e", "run-000001"), filepath.Join(s, "scan", "e", "run-000001"))
				os.Symlink(filepath.Join(o, "scan", "e"), filepath.Join(s, "scan", "e", "run-000002"))
			},
			survive: []string{"outside/scan/e/run-000001"},
			gone:    []string{"state"},
		},
		{
			name: "a foreign file in scan/e",
			plant: func(t *testing.T, s, o string) {
				mk(t, filepath.Join(s, "scan", "e"))
				writeFile(t, filepath.Join(s, "scan", "e", "precious"), []byte("mine"))
				writeFile(t, filepath.Join(s, "scan", "e", "run-000001"), []byte("x"))
			},
			errs:    "precious",
			survive: []string{"state/scan/e/precious", "state/" + markerFile},
			gone:    []string{"state/scan/e/run-000001"},
		},
		{
			name: "a foreign directory in scan",
			plant: func(t *testing.T, s, o string) {
				mk(t, filepath.Join(s, "scan", "foreign-dir"))
			},
			errs:    "foreign-dir",
			survive: []string{"state/scan/foreign-dir"},
		},
	}
	for _, c := range cases {
		for _, how := range []string{"Remove", "Discard"} {
			t.Run(c.name+"/"+how, func(t *testing.T) {
				p := newPlace(t, "state", false)
				j := mustCreate(t, p, Identity{Command: "move"})
				outside := filepath.Join(p.base(), "outside")
				mk(t, filepath.Join(outside, "scan", "e"))
				writeFile(t, filepath.Join(outside, "file"), []byte("keep"))
				writeFile(t, filepath.Join(outside, "scan", "e", "run-000001"), []byte("keep"))
				c.plant(t, p.Path, outside)
				var err error
				if how == "Remove" {
					err = j.Remove([2]unix.Timespec{})
				} else {
					err = Discard(p)
				}
				if c.errs == "" && err != nil {
					t.Errorf("%s: %v", how, err)
				}
				if c.errs != "" && (err == nil || !strings.Contains(err.Error(), c.errs)) {
					t.Errorf("%s: %v, want an error naming %q", how, err, c.errs)
				}
				for _, s := range append(c.survive, "outside/file", "outside/scan/e/run-000001") {
					if !exists(filepath.Join(p.base(), s)) {
						t.Errorf("%s was deleted", s)
					}
				}
				for _, g := range c.gone {
					if exists(filepath.Join(p.base(), g)) {
						t.Errorf("%s is still there", g)
					}
				}
				for _, f := range []string{"outside/file", "outside/scan/e/run-000001"} {
					if b, _ := os.ReadFile(filepath.Join(p.base(), f)); string(b) != "keep" {
						t.Errorf("%s changed: %q", f, b)
					}
				}
				if c.errs != "" {
					// The marker stays: the state can still be discarded
					// once the foreign entries are dealt with, and no
					// later Open takes it for no job.
					if _, err := Open(p, false); errors.Is(err, ErrNoJob) {
						t.Errorf("after a partial removal Open says no job")
					}
				}
			})
		}
	}
}

// TestDiscardWithoutMarker: Discard deletes nothing in a directory that
// does not carry hlcp's marker.
func TestDiscardWithoutMarker(t *testing.T) {
	p := newPlace(t, "state", false)
	j := mustCreate(t, p, testID)
	writeFile(t, j.Join("plan"), []byte("x"))
	writeFile(t, j.Join("precious"), []byte("x"))
	os.MkdirAll(filepath.Join(p.Path, "scan", "e"), 0o700)
	writeFile(t, filepath.Join(p.Path, "scan", "e", "run-000001"), []byte("x"))
	os.Remove(j.Join(markerFile))
	before := snapshot(t, p.base())
	err := Discard(p)
	if err == nil || !strings.Contains(err.Error(), "not an hlcp state directory") {
		t.Errorf("Discard: %v, want a refusal", err)
	}
	if after := snapshot(t, p.base()); after != before {
		t.Errorf("Discard changed a directory without the marker:\nbefore %s\nafter  %s", before, after)
	}

	// Nothing there: nothing to do.
	q := newPlace(t, "missing", false)
	if err := Discard(q); err != nil {
		t.Errorf("Discard of nothing: %v", err)
	}
	os.Mkdir(q.Path, 0o700)
	if err := Discard(q); err != nil || !exists(q.Path) {
		t.Errorf("Discard of an empty directory: %v (exists %v)", err, exists(q.Path))
	}
}

// TestRemoveDir: the state directory goes with the state when hlcp made
// it, or when it is DST/.hlcp-state; a --state directory the user made
// stays, empty.
func TestRemoveDir(t *testing.T) {
	for _, c := range []struct {
		name    string
		inDst   bool
		existed bool // the directory existed, empty, before Create
		rmdir   bool
	}{
		{"--state made by hlcp", false, false, true},
		{"--state made by the user", false, true, false},
		{"DST/.hlcp-state made by hlcp", true, false, true},
		{"DST/.hlcp-state made by the user", true, true, true},
	} {
		for _, how := range []string{"Remove", "Open+Remove", "Discard"} {
			t.Run(c.name+"/"+how, func(t *testing.T) {
				p := newPlace(t, "state", c.inDst)
				if c.existed {
					os.Mkdir(p.Path, 0o700)
				}
				j := mustCreate(t, p, testID)
				j.Reserve()
				var err error
				switch how {
				case "Remove":
					err = j.Remove([2]unix.Timespec{})
				case "Open+Remove":
					k, oerr := Open(p, false)
					if oerr != nil {
						t.Fatal(oerr)
					}
					err = k.Remove([2]unix.Timespec{})
					k.Close()
				case "Discard":
					os.Truncate(j.Join(stateFile), 3)
					err = Discard(p)
				}
				if err != nil {
					t.Fatalf("%s: %v", how, err)
				}
				if exists(p.Path) == c.rmdir {
					t.Errorf("directory exists %v, want %v", exists(p.Path), !c.rmdir)
				}
				if !c.rmdir {
					if names, _ := os.ReadDir(p.Path); len(names) != 0 {
						t.Errorf("left in the directory: %v", names)
					}
				}
				if _, err := Open(p, false); !errors.Is(err, ErrNoJob) {
					t.Errorf("Open after %s: %v", how, err)
				}
			})
		}
	}
}

// TestRemoveSwapped: the directory is removed by its name only while the
// name still holds it.
func TestRemoveSwapped(t *testing.T) {
	p := newPlace(t, "state", true)
	j := mustCreate(t, p, testID)
	if err := os.Rename(p.Path, filepath.Join(p.base(), "moved-away")); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(p.Path, 0o700)
	writeFile(t, filepath.Join(p.Path, "other"), nil)
	err := j.Remove([2]unix.Timespec{})
	if err == nil || !strings.Contains(err.Error(), "no longer holds it") {
		t.Errorf("Remove: %v", err)
	}
	if !exists(filepath.Join(p.Path, "other")) {
		t.Errorf("the directory swapped in was touched")
	}
	if names, _ := os.ReadDir(filepath.Join(p.base(), "moved-away")); len(names) != 0 {
		t.Errorf("the state was not removed from the opened directory: %v", names)
	}
}

// TestRemoveSub: a sort's working directory goes with its run files; a
// missing one is no error; a foreign entry stays and is reported.
func TestRemoveSub(t *testing.T) {
	p := newPlace(t, "state", false)
	j := mustCreate(t, p, testID)
	if err := j.RemoveSub("scan"); err != nil {
		t.Errorf("RemoveSub of nothing: %v", err)
	}
	os.MkdirAll(filepath.Join(p.Path, "sorttmp", "linkruns"), 0o700)
	writeFile(t, filepath.Join(p.Path, "sorttmp", "run-000001"), nil)
	writeFile(t, filepath.Join(p.Path, "sorttmp", "linkruns", "merge-000001"), nil)
	if err := j.RemoveSub("sorttmp"); err != nil || exists(filepath.Join(p.Path, "sorttmp")) {
		t.Errorf("RemoveSub: %v", err)
	}
	os.MkdirAll(filepath.Join(p.Path, "scan", "e"), 0o700)
	writeFile(t, filepath.Join(p.Path, "scan", "e", "notes.txt"), nil)
	if err := j.RemoveSub("scan"); err == nil || !exists(filepath.Join(p.Path, "scan", "e", "notes.txt")) {
		t.Errorf("RemoveSub with a foreign file: %v", err)
	}
}
