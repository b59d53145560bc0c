package scan

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"hlcp/internal/fsx"
	"hlcp/internal/plan"
)

// collect is an Emitter that records what it is given.
type collect struct {
	mu    *sync.Mutex
	dirs  map[uint32]plan.Dir
	rels  map[uint32]string
	lines *[]string
}

func (c *collect) Dir(d *plan.Dir, rel []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.dirs[d.ID]; dup {
		return fmt.Errorf("directory id %d emitted twice", d.ID)
	}
	cp := *d
	cp.Name = append([]byte(nil), d.Name...)
	c.dirs[d.ID] = cp
	c.rels[d.ID] = string(rel)
	return nil
}

func (c *collect) Entry(dir uint32, dev, ino uint64, typ uint8, name, dirRel []byte, st *unix.Stat_t) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := string(name)
	if len(dirRel) > 0 {
		p = string(dirRel) + "/" + p
	}
	*c.lines = append(*c.lines, fmt.Sprintf("%s %d:%d %s", p, dev, ino, fsx.TypeName(typ)))
	return nil
}

func (c *collect) Flush() error { return nil }

func scanTree(t *testing.T, root string, opt Options) (Stats, map[uint32]plan.Dir, map[uint32]string, []string) {
	t.Helper()
	var mu sync.Mutex
	dirs := map[uint32]plan.Dir{}
	rels := map[uint32]string{}
	var lines []string
	opt.NewEmitter = func() Emitter { return &collect{mu: &mu, dirs: dirs, rels: rels, lines: &lines} }
	var errs []string
	user := opt.OnError
	opt.OnError = func(rel string, err error) {
		mu.Lock()
		errs = append(errs, rel+": "+err.Error())
		mu.Unlock()
		if user != nil {
			user(rel, err)
		}
	}
	st, err := Scan(context.Background(), root, opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(errs) > 0 {
		t.Logf("scan errors: %v", errs)
	}
	sort.Strings(lines)
	return st, dirs, rels, lines
}

// walk is the reference: lstat of every path via the standard library.
func walk(t *testing.T, root string) (dirs []string, lines []string) {
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		var st syscall.Stat_t
		syscall.Lstat(p, &st)
		if d.IsDir() {
			if rel == "." {
				rel = ""
			}
			dirs = append(dirs, rel)
			return nil
		}
		lines = append(lines, fmt.Sprintf("%s %d:%d %s", rel, st.Dev, st.Ino, fsx.TypeName(fsx.TypeOfMode(st.Mode))))
		return nil
	})
	sort.Strings(lines)
	sort.Strings(dirs)
	return
}

func buildTree(t *testing.T, root string) {
	for i := 0; i < 30; i++ {
		d := filepath.Join(root, fmt.Sprintf("d%d", i%7), fmt.Sprintf("e%d", i%3))
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", i)), []byte("x"), 0o644)
		os.Symlink("f", filepath.Join(d, fmt.Sprintf("l%d", i)))
		os.Link(filepath.Join(d, fmt.Sprintf("f%d", i)), filepath.Join(root, fmt.Sprintf("hard%d", i)))
	}
	os.WriteFile(filepath.Join(root, "caf\xe9\n"), nil, 0o644)
	unix.Mkfifo(filepath.Join(root, "fifo"), 0o644)
	os.MkdirAll(filepath.Join(root, "empty", "deeper", "deepest"), 0o755)
}

func TestScanMatchesWalk(t *testing.T) {
	root := t.TempDir()
	buildTree(t, root)
	wantDirs, wantLines := walk(t, root)
	for _, c := range []struct {
		jobs  int
		lstat bool
	}{{1, false}, {2, false}, {8, false}, {3, true}} {
		jobs := c.jobs
		t.Run(fmt.Sprint("jobs=", jobs, " lstat=", c.lstat), func(t *testing.T) {
			st, dirs, rels, lines := scanTree(t, root, Options{Jobs: jobs, LstatAll: c.lstat})
			if c.lstat && st.Lstats != st.Entries {
				t.Errorf("LstatAll: %d lstats for %d entries", st.Lstats, st.Entries)
			}
			if fmt.Sprint(lines) != fmt.Sprint(wantLines) {
				t.Errorf("entries differ:\n got %v\nwant %v", lines, wantLines)
			}
			var gotDirs []string
			for id := uint32(0); id < uint32(len(dirs)); id++ {
				d, ok := dirs[id]
				if !ok {
					t.Fatalf("directory ids are not dense: %d missing of %d", id, len(dirs))
				}
				if id > 0 && d.Parent >= id {
					t.Errorf("dir %d has parent %d: parents must have lower ids", id, d.Parent)
				}
				gotDirs = append(gotDirs, rels[id])
			}
			sort.Strings(gotDirs)
			if fmt.Sprint(gotDirs) != fmt.Sprint(wantDirs) {
				t.Errorf("dirs differ:\n got %q\nwant %q", gotDirs, wantDirs)
			}
			if st.Lstats != 0 {
				t.Logf("note: %d entries lstat'ed on this filesystem", st.Lstats)
			}
			if st.Entries != int64(len(wantLines)) || st.Dirs != int64(len(wantDirs)) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestScanOneFileSystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	root := t.TempDir()
	buildTree(t, root)
	mnt := filepath.Join(root, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	os.WriteFile(filepath.Join(mnt, "inside"), nil, 0o644)
	st, dirs, rels, lines := scanTree(t, root, Options{Jobs: 2, OneFileSystem: true})
	if st.MountPoints != 1 {
		t.Errorf("mount points %d", st.MountPoints)
	}
	for _, l := range lines {
		if len(l) > 4 && l[:4] == "mnt/" {
			t.Errorf("descended into a mount point: %s", l)
		}
	}
	found := false
	for id, d := range dirs {
		if rels[id] == "mnt" {
			found = d.Flags&plan.DirMountSkipped != 0
		}
	}
	if !found {
		t.Error("mount point directory not recorded as skipped")
	}
	st2, _, _, lines2 := scanTree(t, root, Options{Jobs: 2})
	if st2.Entries != st.Entries+1 || len(lines2) != len(lines)+1 {
		t.Errorf("without -x the mount's file should be seen: %d vs %d", st2.Entries, st.Entries)
	}
}

// TestScanUnreadable: an unreadable directory is reported, still recorded
// with its metadata, and the scan goes on.
func TestScanUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads everything; covered by the e2e test run as another user")
	}
	root := t.TempDir()
	buildTree(t, root)
	os.Chmod(filepath.Join(root, "d1"), 0)
	defer os.Chmod(filepath.Join(root, "d1"), 0o755)
	st, dirs, rels, _ := scanTree(t, root, Options{Jobs: 2})
	if st.Errors != 1 {
		t.Errorf("errors %d, want 1", st.Errors)
	}
	for id, d := range dirs {
		if rels[id] == "d1" && d.Flags&plan.DirUnreadable == 0 {
			t.Error("d1 not flagged unreadable")
		}
	}
}

// TestScanExclude: a directory listed in Exclude (by dev, ino) is reported,
// recorded as gone and not descended into; the rest is scanned.
func TestScanExclude(t *testing.T) {
	root := t.TempDir()
	buildTree(t, root)
	ex := filepath.Join(root, "excluded")
	os.MkdirAll(filepath.Join(ex, "deeper"), 0o755)
	os.WriteFile(filepath.Join(ex, "deeper", "f"), nil, 0o644)
	var st unix.Stat_t
	if err := unix.Stat(ex, &st); err != nil {
		t.Fatal(err)
	}
	_, _, _, all := scanTree(t, root, Options{Jobs: 2})
	var reported []string
	_, dirs, rels, lines := scanTree(t, root, Options{Jobs: 2, Exclude: [][2]uint64{{st.Dev, st.Ino}},
		OnError: func(rel string, err error) { reported = append(reported, rel+": "+err.Error()) }})
	for _, l := range lines {
		if strings.HasPrefix(l, "excluded/") {
			t.Errorf("descended into an excluded directory: %s", l)
		}
	}
	if len(lines) != len(all)-1 {
		t.Errorf("%d entries, want %d (all but excluded/deeper/f)", len(lines), len(all)-1)
	}
	gone := false
	for id, d := range dirs {
		if rels[id] == "excluded" {
			gone = d.Flags&plan.DirGone != 0
		}
	}
	if !gone {
		t.Error("the excluded directory is not recorded as gone")
	}
	if len(reported) != 1 || !strings.HasPrefix(reported[0], "excluded: ") {
		t.Errorf("reports: %q", reported)
	}
}
